import assert from 'node:assert/strict';
import { Cluster } from 'ioredis';
import { startTestWeb, call, type WebFixture } from './support/web.js';
import { traffic, catalogue } from './support/traffic.js';
import { waitForDrain, assertConsistent, sleep } from './support/pipeline.js';
import { RedisClusterFixture } from './support/redis-cluster.js';
import { Proc } from './support/processes.js';
import { testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { clusterNodes } from '../lib/redis.js';
import { getConfig, ConfigError } from '../lib/config.js';
import { keySlot, partitionOf, queueNames } from '../lib/queue.js';

describe('queue partitions', function () {
  this.timeout(180_000);

  describe('names and routing (unit)', () => {
    it('one partition is today\'s single queue; several get hash tags that fall in distinct thirds of the slot space', () => {
      assert.deepEqual(queueNames({ QUEUE_NAME: 'order-events', QUEUE_PARTITIONS: 1 }), ['order-events']);
      for (const n of [2, 3, 5, 8]) {
        const names = queueNames({ QUEUE_NAME: 'order-events', QUEUE_PARTITIONS: n });
        assert.equal(new Set(names).size, n);
        names.forEach((name, p) => {
          const slot = keySlot(name.slice(1, -1));
          assert.ok(slot >= (p * 16384) / n && slot < ((p + 1) * 16384) / n, `${name} (slot ${slot}) in the ${p}-th ${n}-th of the slots`);
        });
      }
      // Redis's own CRC16 check values.
      assert.equal(keySlot('123456789'), 0x31c3);
      assert.equal(keySlot('foo'), 12182);
    });

    it('routes an event by its id, the same everywhere', () => {
      assert.equal(partitionOf({ QUEUE_PARTITIONS: 1 }, 12345), 0);
      assert.equal(partitionOf({ QUEUE_PARTITIONS: 3 }, 12345), 0);
      assert.equal(partitionOf({ QUEUE_PARTITIONS: 3 }, '12346'), 1);
      assert.equal(partitionOf({ QUEUE_PARTITIONS: 7 }, '9007199254740993'), Number(9007199254740993n % 7n));
    });

    it('refuses a WORKER_PARTITIONS beyond QUEUE_PARTITIONS, and a hash tag in the prefix of several partitions, in one line', () => {
      assert.throws(() => getConfig({ QUEUE_PARTITIONS: '2', WORKER_PARTITIONS: '0,2' }), (e: unknown) => e instanceof ConfigError && /^WORKER_PARTITIONS: partition 2 does not exist/.test(e.message));
      assert.throws(() => getConfig({ WORKER_PARTITIONS: 'one' }), /WORKER_PARTITIONS/);
      assert.throws(() => getConfig({ QUEUE_PARTITIONS: '3', QUEUE_PREFIX: '{op}' }), /QUEUE_PREFIX: .*one slot/);
      assert.deepEqual(getConfig({ QUEUE_PARTITIONS: '4', WORKER_PARTITIONS: '3,1,1' }).WORKER_PARTITIONS, [1, 3]);
      // One partition on a cluster keeps today's layout: the hash tag in the prefix.
      assert.equal(getConfig({ REDIS_CLUSTER_NODES: '127.0.0.1:7000' }).QUEUE_PREFIX, '{op}');
      assert.equal(getConfig({ REDIS_CLUSTER_NODES: '127.0.0.1:7000', QUEUE_PARTITIONS: '3' }).QUEUE_PREFIX, 'op');
    });
  });

  describe('on a 3-master Redis Cluster, QUEUE_PARTITIONS=3 (integration)', () => {
    let cluster: RedisClusterFixture;
    let f: WebFixture;
    let relay: RelayHandle | undefined;
    const procs: Proc[] = [];

    before(async () => {
      cluster = await RedisClusterFixture.start();
      f = await startTestWeb({ REDIS_CLUSTER_NODES: cluster.nodes, QUEUE_PARTITIONS: '3', ADMIN_PASSWORD: 'partitions-pw', RECONCILE_INTERVAL_MS: '500', RECONCILE_GRACE_MS: '1500', STALLED_INTERVAL_MS: '2000' });
    });
    after(async () => {
      for (const p of procs) await p.signal('SIGKILL').catch(() => undefined);
      await relay?.stop();
      await f?.stop();
      await cluster?.stop();
    });

    it('spreads the partitions over all three masters, and a worker killed (kill -9) mid-burst loses and doubles nothing', async () => {
      relay = await startRelay(f.env.config, testLog);
      const env = { ...f.env.env, LOG_LEVEL: 'info', RELAY_JOB_EVENTS: '10' };
      const start = () => {
        const w = new Proc('workers/projector/main.js', env).start();
        procs.push(w);
        return w;
      };
      const [a, b] = [start(), start()];
      await Promise.all([a.waitFor(/worker started/), b.waitFor(/worker started/)]);
      const products = await catalogue(f.base);
      const load = traffic([f.base], products, 400, 'partitions');
      await sleep(600);
      await a.signal('SIGKILL');
      await load;
      const c = start();
      await c.waitFor(/worker started/);
      await waitForDrain(f.writeDb, f.readDb, 90_000);
      await assertConsistent(f.writeDb, f.readDb);

      // Each partition's keys on one master, and every master holding one partition.
      const client = new Cluster(clusterNodes(cluster.nodes));
      try {
        await new Promise((resolve) => client.once('ready', resolve));
        const names = queueNames(f.env.config);
        const holders = names.map(() => new Set<number>());
        for (const node of client.nodes('master')) {
          for (const key of await node.keys(`${f.env.config.QUEUE_PREFIX}:*`)) {
            const p = names.findIndex((n) => key.startsWith(`${f.env.config.QUEUE_PREFIX}:${n}:`));
            if (p >= 0) holders[p]!.add(node.options.port!);
          }
        }
        holders.forEach((h, p) => assert.equal(h.size, 1, `partition ${p}'s keys on one master (on ${[...h]})`));
        assert.equal(new Set(holders.map((h) => [...h][0])).size, 3, 'the three partitions on three masters');
      } finally {
        client.disconnect();
      }
      // Bull Board and /metrics see every partition.
      const board = await fetch(`${f.base}/admin/queues/api/queues`, { headers: { authorization: `Basic ${Buffer.from('admin:partitions-pw').toString('base64')}` } });
      const listed = JSON.stringify(await board.json());
      for (const n of queueNames(f.env.config)) assert.ok(listed.includes(n), `Bull Board lists ${n}`);
      assert.match((await call(f.base, 'GET', '/metrics')).body as string, /queue_jobs\{state="completed"\} [1-9]/);
    });
  });

  describe('on one Redis (integration)', () => {
    let f: WebFixture;
    const handles: (RelayHandle | ProjectorHandle)[] = [];
    afterEach(async () => {
      for (const h of handles.splice(0)) await h.stop();
      await f?.stop();
    });

    it('a worker consumes only the partitions WORKER_PARTITIONS names', async () => {
      f = await startTestWeb({ QUEUE_PARTITIONS: '2' });
      const config = (extra: Record<string, string>) => getConfig({ ...f.env.env, ...extra });
      handles.push(await startRelay(f.env.config, testLog), await startProjector(config({ WORKER_PARTITIONS: '1' }), testLog));
      await traffic([f.base], await catalogue(f.base), 40, 'only-one');
      const { rows: outbox } = await f.write.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE id % 2 = 1');
      for (let i = 0; i < 100; i++) {
        const { rows } = await f.read.query<{ n: number }>('SELECT count(*)::int AS n FROM processed_events');
        if (rows[0]!.n >= outbox[0]!.n) break;
        await sleep(100);
      }
      const { rows } = await f.read.query<{ even: number; odd: number }>('SELECT count(*) FILTER (WHERE event_id::bigint % 2 = 0)::int AS even, count(*) FILTER (WHERE event_id::bigint % 2 = 1)::int AS odd FROM processed_events');
      assert.deepEqual(rows[0], { even: 0, odd: outbox[0]!.n });
      handles.push(await startProjector(config({ WORKER_PARTITIONS: '0' }), testLog));
      await waitForDrain(f.writeDb, f.readDb);
      await assertConsistent(f.writeDb, f.readDb);
    });

    it('changing QUEUE_PARTITIONS on a running system loses nothing: what waits in the old layout comes back through the reconciler', async () => {
      f = await startTestWeb({ RECONCILE_INTERVAL_MS: '300', RECONCILE_GRACE_MS: '500' });
      const products = await catalogue(f.base);
      // One partition: a backlog published into it, no worker running.
      const old = await startRelay(f.env.config, testLog);
      await traffic([f.base], products, 60, 'before');
      for (let i = 0; i < 100; i++) {
        const { rows } = await f.write.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL');
        if (rows[0]!.n === 0) break;
        await sleep(100);
      }
      await old.stop();
      // Three partitions from now on: relays and workers restarted with the new setting.
      const three = getConfig({ ...f.env.env, QUEUE_PARTITIONS: '3' });
      handles.push(await startRelay(three, testLog), await startProjector(three, testLog));
      await traffic([f.base], products, 60, 'after');
      await waitForDrain(f.writeDb, f.readDb, 60_000);
      await assertConsistent(f.writeDb, f.readDb);
      // And back to one, with a backlog waiting in the three partitions.
      const [relay3, worker3] = handles.splice(0);
      await worker3!.stop();
      await traffic([f.base], products, 30, 'backlog-in-three');
      for (let i = 0; i < 100; i++) {
        const { rows } = await f.write.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox WHERE published_at IS NULL');
        if (rows[0]!.n === 0) break;
        await sleep(100);
      }
      await relay3!.stop();
      handles.push(await startRelay(f.env.config, testLog), await startProjector(f.env.config, testLog));
      await waitForDrain(f.writeDb, f.readDb, 60_000);
      await assertConsistent(f.writeDb, f.readDb);
    });
  });
});
