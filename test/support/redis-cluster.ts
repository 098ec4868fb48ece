import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from './processes.js';
import { sleep } from './pipeline.js';

/**
 * A private 3-master Redis Cluster on loopback ports (no replicas), for
 * tests: `redis-server --cluster-enabled yes` ×3 joined with
 * `redis-cli --cluster create`. A node can be killed and started again on the
 * same port and nodes.conf: it rejoins with its slots, its data gone.
 */
export class RedisClusterFixture {
  private readonly children = new Map<number, ChildProcess>();
  private constructor(
    readonly ports: number[],
    private readonly dir: string,
  ) {}

  get nodes(): string {
    return this.ports.map((p) => `127.0.0.1:${p}`).join(',');
  }

  static async start(): Promise<RedisClusterFixture> {
    const ports = [await freePort(), await freePort(), await freePort()];
    const c = new RedisClusterFixture(ports, fs.mkdtempSync(path.join(os.tmpdir(), 'op-cluster-')));
    for (const p of ports) await c.startNode(p);
    const create = spawnSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8' });
    if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stdout}${create.stderr}`);
    await c.waitOk();
    return c;
  }

  async startNode(port: number): Promise<void> {
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', path.join(this.dir, `nodes-${port}.conf`), '--dir', this.dir, '--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction'], { stdio: 'ignore' });
    this.children.set(port, child);
    for (let i = 0; i < 100; i++) {
      const r = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0 });
      r.on('error', () => undefined);
      try {
        await r.connect();
        await r.ping();
        return;
      } catch {
        await sleep(50);
      } finally {
        r.disconnect();
      }
    }
    throw new Error(`cluster node ${port} did not start`);
  }

  /** Until every node reports cluster_state:ok. */
  async waitOk(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      let ok = true;
      for (const p of this.ports) {
        const r = spawnSync('redis-cli', ['-p', String(p), 'cluster', 'info'], { encoding: 'utf8' });
        if (!/cluster_state:ok/.test(r.stdout)) ok = false;
      }
      if (ok) return;
      await sleep(200);
    }
    throw new Error('cluster did not reach cluster_state:ok');
  }

  /** The port of the master that owns a key's slot. */
  ownerOf(key: string): number {
    const slot = Number(spawnSync('redis-cli', ['-p', String(this.ports[0]), 'cluster', 'keyslot', key], { encoding: 'utf8' }).stdout.trim());
    const shards = spawnSync('redis-cli', ['-p', String(this.ports[0]), 'cluster', 'slots'], { encoding: 'utf8' }).stdout.split('\n').map((l) => l.trim());
    // Output is: start, end, ip, port, id, ... per range.
    for (let i = 0; i + 3 < shards.length; i++) {
      const start = Number(shards[i]);
      const end = Number(shards[i + 1]);
      if (/^\d+$/.test(shards[i]!) && /^\d+$/.test(shards[i + 1]!) && shards[i + 2] === '127.0.0.1' && slot >= start && slot <= end) return Number(shards[i + 3]);
    }
    throw new Error(`no owner found for slot ${slot}`);
  }

  async killNode(port: number): Promise<void> {
    const child = this.children.get(port);
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }

  async stop(): Promise<void> {
    for (const p of this.ports) await this.killNode(p);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
