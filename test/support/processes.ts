import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { projectRoot } from '../../lib/paths.js';
import { sleep } from './pipeline.js';

/** A free TCP port on loopback. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** A private redis-server on a spare port, for tests that kill or flush Redis. */
export class PrivateRedis {
  private child: ChildProcess | undefined;
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<PrivateRedis> {
    const r = new PrivateRedis(await freePort());
    await r.start();
    return r;
  }

  async start(): Promise<void> {
    this.child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction'], { stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      if (await canConnect(this.port)) return;
      await sleep(50);
    }
    throw new Error(`redis-server on ${this.port} did not start`);
  }

  /** SIGKILL: everything in memory is gone. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** A Procfile process (`node dist/...`) run as a child with its own environment. */
export class Proc {
  child: ChildProcess | undefined;
  output = '';
  constructor(
    readonly script: string,
    readonly env: Record<string, string>,
    readonly args: string[] = [],
  ) {}

  start(): this {
    this.child = spawn(process.execPath, [path.join(projectRoot, 'dist', this.script), ...this.args], {
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const keep = (b: Buffer) => {
      this.output = (this.output + b.toString()).slice(-20_000);
    };
    this.child.stdout?.on('data', keep);
    this.child.stderr?.on('data', keep);
    return this;
  }

  /** Run to completion; resolves with the output, rejects on a non-zero exit. */
  async run(timeoutMs = 30_000): Promise<string> {
    this.start();
    const child = this.child!;
    const code = await new Promise<number | null>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.script} still running after ${timeoutMs} ms`)), timeoutMs);
      child.once('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    if (code !== 0) throw new Error(`${this.script} exited ${code}: ${this.output}`);
    return this.output;
  }

  async signal(sig: NodeJS.Signals): Promise<{ code: number | null; ms: number }> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return { code: child?.exitCode ?? null, ms: 0 };
    const t0 = Date.now();
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill(sig);
    const code = await exited;
    return { code, ms: Date.now() - t0 };
  }

  /** Wait until the process has written `pattern` to its output. */
  async waitFor(pattern: RegExp, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (pattern.test(this.output)) return;
      if (this.child?.exitCode !== null) throw new Error(`${this.script} exited: ${this.output.slice(-2000)}`);
      await sleep(50);
    }
    throw new Error(`${this.script} did not log ${pattern} in ${timeoutMs} ms: ${this.output.slice(-2000)}`);
  }
}
