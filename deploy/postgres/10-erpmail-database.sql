-- erpmail's ERP and mail tables live in a database of their own beside Airflow's metadata
-- (the erp_db connection in docker-compose.yaml). PostgreSQL's image runs this once, when it
-- initialises an empty data volume; airflow-init then applies the migrations in sql/.
CREATE ROLE erpmail LOGIN PASSWORD 'erpmail';
CREATE DATABASE erpmail OWNER erpmail;
