import assert from 'node:assert/strict';
import { Cluster } from 'ioredis';
import { startTestWeb, call, type WebFixture } from './support/web.js';
import { traffic, catalogue } from './support/traffic.js';
import { waitForDrain, assertConsistent, sleep } from './support/pipeline.js';
import { RedisClusterFixture } from './support/redis-cluster.js';
import { Proc, freePort } from './support/processes.js';
import { testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { clusterNodes } from '../lib/redis.js';
import { PrivatePostgres } from './support/private-pg.js';
import { migrate } from '../db/migrate.js';
import { getConfig } from '../lib/config.js';

describe('scale-out (integration)', function () {
  this.timeout(180_000);

  describe('on a 3-master Redis Cluster', () => {
    let cluster: RedisClusterFixture;
    let f: WebFixture;
    let relays: RelayHandle[] = [];
    let workers: ProjectorHandle[] = [];

    before(async () => {
      cluster = await RedisClusterFixture.start();
      f = await startTestWeb({ REDIS_CLUSTER_NODES: cluster.nodes, ADMIN_PASSWORD: 'cluster-admin-pw', RECONCILE_INTERVAL_MS: '500', RECONCILE_GRACE_MS: '1500', STALLED_INTERVAL_MS: '2000' });
      relays = [await startRelay(f.env.config, testLog), await startRelay(f.env.config, testLog)];
      workers = [await startProjector(f.env.config, testLog), await startProjector(f.env.config, testLog)];
    });
    after(async () => {
      for (const h of [...relays, ...workers]) await h.stop();
      await f?.stop();
      await cluster?.stop();
    });

    it('wraps the queue prefix in a hash tag so each queue lives in one slot', async () => {
      assert.match(f.env.config.QUEUE_PREFIX, /^\{.+\}$/);
      const products = await catalogue(f.base);
      await traffic([f.base], products, 20, 'slot');
      await waitForDrain(f.writeDb, f.readDb);
      const client = new Cluster(clusterNodes(cluster.nodes));
      try {
        await new Promise((resolve) => client.once('ready', resolve)); // nodes() is empty until connected
        const owner = cluster.ownerOf(`${f.env.config.QUEUE_PREFIX}:x`);
        const node = client.nodes('master').find((n) => n.options.port === owner)!;
        const keys = await node.keys(`${f.env.config.QUEUE_PREFIX}:*`);
        assert.ok(keys.length > 0, 'the queue keys are on the node that owns the hash tag');
        for (const other of client.nodes('master').filter((n) => n !== node)) assert.deepEqual(await other.keys(`${f.env.config.QUEUE_PREFIX}:*`), []);
      } finally {
        client.disconnect();
      }
      await assertConsistent(f.writeDb, f.readDb);
      // Readiness, metrics and Bull Board use the cluster too.
      assert.equal((await call(f.base, 'GET', '/readyz')).status, 200);
      assert.match((await call(f.base, 'GET', '/metrics')).body as string, /queue_jobs\{state="completed"\} [1-9]/);
      const board = await fetch(`${f.base}/admin/queues/api/queues`, { headers: { authorization: `Basic ${Buffer.from('admin:cluster-admin-pw').toString('base64')}` } });
      assert.equal(board.status, 200);
      assert.ok(JSON.stringify(await board.json()).includes(f.env.config.QUEUE_NAME));
    });

    it('orders → read model stays exact through a restart (empty) of the node holding the queue', async () => {
      const products = await catalogue(f.base);
      const owner = cluster.ownerOf(`${f.env.config.QUEUE_PREFIX}:x`);
      const load = traffic([f.base], products, 200, 'restart').catch((err: unknown) => err);
      await sleep(400);
      await cluster.killNode(owner);
      await sleep(1000);
      await cluster.startNode(owner);
      await cluster.waitOk();
      const failed = await load;
      // Intake writes only PostgreSQL: orders keep succeeding while the node is down.
      assert.equal(failed, undefined);
      await waitForDrain(f.writeDb, f.readDb, 90_000);
      await assertConsistent(f.writeDb, f.readDb);
    });
  });

  describe('read_db on a second PostgreSQL server', () => {
    let server: PrivatePostgres;
    let f: WebFixture;
    let relay: RelayHandle | undefined;
    let worker: ProjectorHandle | undefined;

    before(async function () {
      this.timeout(120_000);
      server = await PrivatePostgres.create();
      const readUrl = server.url('read_db');
      await migrate(readUrl, 'read', testLog);
      f = await startTestWeb({ READ_DATABASE_URL: readUrl, RECONCILE_INTERVAL_MS: '500', RECONCILE_GRACE_MS: '1000' });
      assert.equal(getConfig(f.env.env).READ_DATABASE_URL, readUrl);
    });
    after(async () => {
      await relay?.stop();
      await worker?.stop();
      await f?.stop();
      await server?.destroy();
    });

    it('runs the pipeline, verify and rebuild across two servers', async () => {
      relay = await startRelay(f.env.config, testLog);
      worker = await startProjector(f.env.config, testLog);
      await traffic([f.base], await catalogue(f.base), 120, 'two-servers');
      await waitForDrain(f.writeDb, f.readDb);
      await assertConsistent(f.writeDb, f.readDb);
      await f.read.query('UPDATE hourly_sales_view SET total_orders = total_orders + 1');
      await assert.rejects(new Proc('scripts/verify.js', f.env.env).run(), /exited 1/);
      assert.match(await new Proc('scripts/rebuild.js', f.env.env).run(), /rebuild: done/);
      assert.match(await new Proc('scripts/verify.js', f.env.env).run(), /verify: OK/);
    });
  });

  describe('many processes: 3 web, 3 relay, 4 worker', () => {
    let f: WebFixture;
    const procs: Proc[] = [];
    after(async () => {
      for (const p of procs) await p.signal('SIGTERM');
      await f?.stop();
    });

    it('spreads orders over every web, events over every relay and worker, and applies each once', async () => {
      f = await startTestWeb();
      const env = { ...f.env.env, LOG_LEVEL: 'info' };
      const ports = [await freePort(), await freePort(), await freePort()];
      const webs = ports.map((port) => new Proc('api/main.js', { ...env, PORT: String(port) }).start());
      const relays = [1, 2, 3].map(() => new Proc('workers/relay/main.js', env).start());
      const workers = [1, 2, 3, 4].map(() => new Proc('workers/projector/main.js', { ...env, WORKER_CONCURRENCY: '20', PROJECTOR_BATCH_SIZE: '10', PROJECTOR_BATCH_WAIT_MS: '20' }).start());
      procs.push(...webs, ...relays, ...workers);
      await Promise.all([...webs.map((w) => w.waitFor(/web listening/)), ...relays.map((r) => r.waitFor(/listening for outbox/)), ...workers.map((w) => w.waitFor(/worker started/))]);
      const bases = ports.map((p) => `http://127.0.0.1:${p}`);
      const products = await catalogue(bases[0]!);
      await traffic(bases, products, 600, 'many');
      await waitForDrain(f.writeDb, f.readDb, 90_000);
      await assertConsistent(f.writeDb, f.readDb);
      await sleep(5500); // one metrics push
      const text = (await call(bases[1]!, 'GET', '/metrics')).body as string;
      for (const w of bases) {
        const m = (await call(w, 'GET', '/metrics')).body as string;
        assert.match(m, /orders_changes_total\{event="created",replayed="false"\} [1-9]/, `${w} took orders`);
      }
      // Every relay and worker pushed its own counters; each must have done a share of the work.
      const pushed = await readPerProcess(f);
      assert.equal(pushed.relay.length, 3, text.slice(0, 200));
      assert.equal(pushed.worker.length, 4);
      assert.ok(pushed.relay.every((n) => n > 0), `relayed per relay: ${pushed.relay}`);
      assert.ok(pushed.worker.every((n) => n > 0), `applied per worker: ${pushed.worker}`);
    });
  });
});

async function readPerProcess(f: WebFixture): Promise<{ relay: number[]; worker: number[] }> {
  const { Redis } = await import('ioredis');
  const r = new Redis(f.env.config.REDIS_URL);
  try {
    const all = await r.hgetall(`${f.env.config.QUEUE_PREFIX}:metrics`);
    const out = { relay: [] as number[], worker: [] as number[] };
    for (const [field, text] of Object.entries(all)) {
      const metrics = (JSON.parse(text) as { metrics: { name: string; values: { value: number }[] }[] }).metrics;
      const value = (name: string) => metrics.find((m) => m.name === name)?.values[0]?.value ?? 0;
      if (field.startsWith('relay:')) out.relay.push(value('relay_events_relayed_total'));
      if (field.startsWith('worker:')) out.worker.push(value('projection_events_applied_total'));
    }
    return out;
  } finally {
    r.disconnect();
  }
}
