import client from 'prom-client';

export interface ProjectorMetrics {
  registry: client.Registry;
  applied: client.Counter;
  duplicates: client.Counter;
  failed: client.Counter;
  poison: client.Counter;
  parkedSkipped: client.Counter;
  batchSize: client.Histogram;
  lag: client.Histogram;
}

export function createProjectorMetrics(registry = new client.Registry()): ProjectorMetrics {
  return {
    registry,
    applied: new client.Counter({ name: 'projection_events_applied_total', help: 'Events applied to the read model', registers: [registry] }),
    duplicates: new client.Counter({ name: 'projection_duplicates_skipped_total', help: 'Deliveries skipped because the event was already in processed_events', registers: [registry] }),
    failed: new client.Counter({ name: 'projection_batches_failed_total', help: 'Tries of a batch that failed for a transient reason (read_db away, deadlock, timeout); the batch is retried', registers: [registry] }),
    poison: new client.Counter({ name: 'projection_events_dead_lettered_total', help: 'Events that can never apply (malformed, or refused by read_db every time), split out of their batch and recorded in dead_letters', registers: [registry] }),
    parkedSkipped: new client.Counter({ name: 'projection_parked_skipped_total', help: 'Deliveries of events an operator parked: not applied', registers: [registry] }),
    batchSize: new client.Histogram({ name: 'projection_batch_size', help: 'Events per read_db transaction', buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000], registers: [registry] }),
    lag: new client.Histogram({
      name: 'projection_lag_seconds',
      help: 'Seconds from the event being written (outbox created_at) to it being applied',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    }),
  };
}
