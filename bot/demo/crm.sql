-- A small CRM-shaped database: roles, RLS policies, an enum, jsonb, triggers, a view,
-- sequences and non-ASCII text. Used by `backupbot demo` and the round-trip tests.
DO $$ BEGIN
    CREATE ROLE crm_app NOLOGIN;
    CREATE ROLE crm_readonly NOLOGIN;
    CREATE ROLE sales_rep NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;  -- roles are per cluster; tests load this file often
END $$;

CREATE SCHEMA crm AUTHORIZATION CURRENT_USER;
CREATE TYPE crm.deal_stage AS ENUM ('lead', 'qualified', 'proposal', 'won', 'lost');

CREATE TABLE crm.accounts (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    country     text NOT NULL,
    owner_name  text NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.contacts (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES crm.accounts(id) ON DELETE CASCADE,
    full_name   text NOT NULL,
    email       text NOT NULL UNIQUE,
    phone       text,
    tags        text[] NOT NULL DEFAULT '{}'
);

CREATE TABLE crm.deals (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES crm.accounts(id),
    title       text NOT NULL,
    stage       crm.deal_stage NOT NULL DEFAULT 'lead',
    amount      numeric(12,2) NOT NULL,
    owner_role  text NOT NULL DEFAULT 'sales_rep',
    details     jsonb,
    closed_on   date
);

CREATE TABLE crm.notes (
    id          bigserial PRIMARY KEY,
    deal_id     bigint REFERENCES crm.deals(id) ON DELETE SET NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.audit_log (
    id          bigserial PRIMARY KEY,
    table_name  text NOT NULL,
    row_id      bigint NOT NULL,
    action      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE crm.invoice_number START 1000;

CREATE FUNCTION crm.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER accounts_touch BEFORE UPDATE ON crm.accounts
    FOR EACH ROW EXECUTE FUNCTION crm.touch_updated_at();

CREATE FUNCTION crm.log_deal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO crm.audit_log(table_name, row_id, action) VALUES ('deals', NEW.id, TG_OP); RETURN NEW; END $$;
CREATE TRIGGER deals_audit AFTER INSERT OR UPDATE ON crm.deals
    FOR EACH ROW EXECUTE FUNCTION crm.log_deal();

CREATE VIEW crm.pipeline AS
    SELECT a.name AS account, d.stage, count(*) AS deals, sum(d.amount) AS total
    FROM crm.deals d JOIN crm.accounts a ON a.id = d.account_id
    GROUP BY a.name, d.stage;

ALTER TABLE crm.deals ENABLE ROW LEVEL SECURITY;
CREATE POLICY deals_owner ON crm.deals FOR ALL TO sales_rep USING (owner_role = current_user);
CREATE POLICY deals_read ON crm.deals FOR SELECT TO crm_readonly USING (true);
ALTER TABLE crm.notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm.notes FORCE ROW LEVEL SECURITY;
CREATE POLICY notes_read ON crm.notes FOR SELECT TO crm_readonly USING (true);

GRANT USAGE ON SCHEMA crm TO crm_app, crm_readonly, sales_rep;
GRANT SELECT ON ALL TABLES IN SCHEMA crm TO crm_readonly;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm TO crm_app;
GRANT SELECT, UPDATE ON crm.deals TO sales_rep;
REVOKE ALL ON crm.audit_log FROM crm_readonly;

SELECT setseed(0.42);
INSERT INTO crm.accounts (name, country, owner_name, metadata)
SELECT (ARRAY['Müller GmbH','Société Générale d''Études','Åsa & Björk AB','Łódź Logistics','東京商事','Ñandú Ventures','Café Olé','Zürich Consulting'])[1 + (i % 8)] || ' #' || i,
       (ARRAY['DE','FR','SE','PL','JP','AR','ES','CH'])[1 + (i % 8)],
       (ARRAY['Zoë','José','Søren','Małgorzata','Ярослав','Ana'])[1 + (i % 6)],
       jsonb_build_object('tier', (ARRAY['gold','silver','bronze'])[1 + (i % 3)], 'seats', i * 3, 'tags', jsonb_build_array('crm', i % 5))
FROM generate_series(1, 200) AS i;
INSERT INTO crm.contacts (account_id, full_name, email, phone, tags)
SELECT 1 + (i % 200), 'Contact ' || i || ' ' || (ARRAY['Ødegaard','Nuñez','Šimić'])[1 + (i % 3)],
       'contact' || i || '@example.com', '+49 30 ' || (1000000 + i), (ARRAY['vip','newsletter'])[1:(i % 3)]
FROM generate_series(1, 600) AS i;
INSERT INTO crm.deals (account_id, title, stage, amount, details, closed_on)
SELECT 1 + (i % 200), 'Deal ' || i || ' — renewal', (ARRAY['lead','qualified','proposal','won','lost']::crm.deal_stage[])[1 + (i % 5)],
       round((random() * 100000)::numeric, 2), jsonb_build_object('source', 'web', 'score', i % 100),
       CASE WHEN i % 5 IN (3, 4) THEN date '2026-01-01' + (i % 300) END
FROM generate_series(1, 400) AS i;
INSERT INTO crm.notes (deal_id, body)
SELECT 1 + (i % 400), 'Called the customer about the renewal; they asked for a discount of ' || (i % 20) || ' % — naïve pricing ☕'
FROM generate_series(1, 800) AS i;
SELECT nextval('crm.invoice_number') FROM generate_series(1, 17);
