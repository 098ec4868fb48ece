-- The relay's wake-up names the highest outbox id its statement wrote. A
-- relay that hears, during a round, of rows that round's claim already took
-- skips the next round: at 200 orders/s 0.44 claims an order were empty, three
-- round trips each (docs/performance.md). Still a wake-up, never the data:
-- the relay claims by published_at IS NULL whatever a payload says, and polls.
-- One notification a statement, as before (a transaction of several
-- statements now sends one per statement: their payloads differ).
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{{OUTBOX_CHANNEL}}', coalesce((SELECT max(id)::text FROM new_rows), ''));
  RETURN NULL;
END $$;
DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
