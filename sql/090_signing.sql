-- Signed mail (S/MIME). Who may sign and with which certificate, and what gets signed.
-- Keys and certificates live only in Airflow connections (the PKCS#12 in the extra
-- "pkcs12", base64, its password as the connection's password): never in these tables.

-- One row per ERP user who has a signing identity. ``fingerprint`` picks the certificate
-- (SHA-256 of its DER, hex, colons allowed) when the connection holds several; empty: the
-- one currently valid certificate, and none or more than one is refused naming the user.
-- ``sign_own_mail``: mail a run sends on this user's behalf (the run's params "user") is
-- signed as the user, whatever the rules say.
CREATE TABLE mail.signers (
    login         text PRIMARY KEY REFERENCES erp.users (login) ON DELETE CASCADE,
    may_sign      boolean NOT NULL DEFAULT false,
    fingerprint   text CHECK (fingerprint IS NULL OR fingerprint = ''
                              OR fingerprint ~ '^([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$'),
    conn_id       text NOT NULL CHECK (conn_id ~ '^[A-Za-z0-9_.-]+$'),
    sign_own_mail boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- What is signed: a document kind (erp.runs.kind), an account (mail.accounts.name), or
-- both; empty means any. The most specific rule for a message wins: kind and account, then
-- kind, then account, then the rule for everything. ``signer`` NULL: the run's user signs
-- (a run that names no user is refused for such a rule).
CREATE TABLE mail.signing_rules (
    id       bigserial PRIMARY KEY,
    document text CHECK (document ~ '^[a-z_]+$'),
    account  text REFERENCES mail.accounts (name) ON DELETE CASCADE ON UPDATE CASCADE,
    signer   text REFERENCES mail.signers (login) ON DELETE CASCADE,
    UNIQUE NULLS NOT DISTINCT (document, account)
);

-- Certificates withdrawn before their end date (the CA's revocation, copied here): refused
-- from ``revoked_at`` on. Keyed by the SHA-256 fingerprint (lowercase hex, no colons).
CREATE TABLE mail.revoked_certificates (
    fingerprint text PRIMARY KEY CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    revoked_at  timestamptz NOT NULL,
    reason      text NOT NULL DEFAULT ''
);
