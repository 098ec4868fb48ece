import client from 'prom-client';

export interface ApiMetrics {
  registry: client.Registry;
  httpDuration: client.Histogram<'method' | 'route' | 'status'>;
  ordersChanged: client.Counter<'event' | 'replayed'>;
}

export function createApiMetrics(): ApiMetrics {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });
  return {
    registry,
    httpDuration: new client.Histogram({
      name: 'http_request_duration_seconds',
      help: 'HTTP request duration by route template and status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    ordersChanged: new client.Counter({
      name: 'orders_changes_total',
      help: 'Order changes written (created, paid, shipped, cancelled), and whether an Idempotency-Key replayed them',
      labelNames: ['event', 'replayed'],
      registers: [registry],
    }),
  };
}
