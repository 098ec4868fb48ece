import fs from 'node:fs';
import http from 'node:http';
import { benchEnv, seedProducts, sleep, startProc, stopProc } from './lib.js';

/**
 * CPU per event of one relay and one worker, tracing off and on (every trace
 * sampled, and 1 in 10), with spans sent to a local OTLP sink; the figures of
 * docs/operations.md, Tracing. CPU time, unlike throughput, stays comparable
 * on a machine shared with other work. `node dist/bench/tracing-cost.js [events] [reps]`
 */
const N = Number(process.argv[2] ?? 20_000);
const REPS = Number(process.argv[3] ?? 2);
const sink = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => res.writeHead(200, { 'content-type': String(req.headers['content-type'] ?? '') }).end());
});
await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
const endpoint = `http://127.0.0.1:${(sink.address() as { port: number }).port}`;
const MODES: Record<string, Record<string, string>> = {
  off: {},
  'on, every trace sampled': { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint },
  'on, 1 in 10 sampled': { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' },
};
const cpu = (pid: number | undefined): number => {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
for (let rep = 1; rep <= REPS; rep++) {
  for (const [mode, extra] of Object.entries(MODES)) {
    const env = await benchEnv('tracingcost');
    try {
      await seedProducts(env.write, 1000);
      const relay = startProc('workers/relay/main.js', { ...env.env, ...extra });
      const worker = startProc('workers/projector/main.js', { ...env.env, ...extra });
      await sleep(4000); // both started and idle
      const r0 = cpu(relay.pid);
      const w0 = cpu(worker.pid);
      const t0 = performance.now();
      // Every event carries a traceparent as if written by a traced request; 1 in 10 marked sampled for the ratio mode.
      const sampledOnly = mode.includes('1 in 10');
      for (let from = 1; from <= N; from += 500) {
        await env.write.query(
          `SELECT set_config('op.traceparent', '00-' || md5(g::text || $3) || '-' || substr(md5(g::text || 's'), 1, 16) || CASE WHEN $4 AND g % 10 <> 0 THEN '-00' ELSE '-01' END, true),
                  place_order(1 + (g % 5000), ARRAY[1 + (g % 1000), 1 + ((g * 7) % 1000)], ARRAY[1 + (g % 3), 1], NULL, NULL)
             FROM generate_series($1::int, $2::int) g`,
          [from, Math.min(N, from + 499), String(rep), sampledOnly],
        );
      }
      for (;;) {
        const { rows } = await env.read.query<{ n: number }>('SELECT count(*)::int AS n FROM processed_events');
        if (rows[0]!.n >= N) break;
        await sleep(50);
      }
      const seconds = (performance.now() - t0) / 1000;
      const perEvent = (a: number, b: number) => Math.round(((b - a) / N) * 1e6);
      console.log(`${mode.padEnd(24)} relay ${perEvent(r0, cpu(relay.pid))} µs/event · worker ${perEvent(w0, cpu(worker.pid))} µs/event · ${N} events in ${seconds.toFixed(1)} s`);
      await Promise.all([relay, worker].map(stopProc));
    } finally {
      await env.drop();
    }
  }
}
sink.close();
process.exit(0);
