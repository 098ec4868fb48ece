/** PostgreSQL NOTIFY channels. Both carry an empty payload: they are wake-ups, never data. */

/** write_db: the outbox trigger notifies here (see 0001_schema.sql); relays listen. */
export const OUTBOX_CHANNEL = 'outbox';

/** read_db: the projector notifies here after a batch commits; web processes waiting on a consistency token listen. */
export const APPLIED_CHANNEL = 'projection_applied';
