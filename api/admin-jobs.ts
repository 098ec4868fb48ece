import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { projectRoot } from '../lib/paths.js';
import type { Config } from '../lib/config.js';
import type { Logger } from '../lib/logger.js';

/**
 * `npm run verify` and `npm run rebuild` started from the admin view: each a
 * child process of this web (node dist/scripts/<kind>.js, the same command an
 * operator runs), so a long rebuild or a verify that reads every view costs
 * the web no memory or event-loop time. One of each kind at a time per web
 * process; verify also records its result in read_db (verify_runs), which
 * every web shows. Children are stopped with the web.
 */

export type JobKind = 'verify' | 'rebuild';

export interface JobRun {
  kind: JobKind;
  pid: number | undefined;
  started_at: string;
  /** null while it runs. */
  finished_at: string | null;
  /** The exit code; null while it runs or when a signal ended it. */
  exit_code: number | null;
  signal: string | null;
  /** The last lines it wrote (stdout and stderr), oldest first. */
  output: string[];
}

/** How long verify may wait for the read model to catch up (its --wait), and how long it may run in all before it is stopped. */
const VERIFY_WAIT_S = 30;
const VERIFY_LIMIT_MS = 10 * 60_000;
const OUTPUT_LINES = 40;

const COMMANDS: Record<JobKind, { args: string[]; limitMs?: number }> = {
  verify: { args: [path.join('dist', 'scripts', 'verify.js'), '--wait', String(VERIFY_WAIT_S)], limitMs: VERIFY_LIMIT_MS },
  rebuild: { args: [path.join('dist', 'scripts', 'rebuild.js')] },
};

interface Entry {
  run: JobRun;
  child?: ChildProcess;
  exited: Promise<void>;
}

export class AdminJobs {
  private entries = new Map<JobKind, Entry>();
  private stopped = false;

  constructor(
    private readonly config: Pick<Config, 'DATABASE_URL' | 'READ_DATABASE_URL'>,
    private readonly log: Logger,
    private readonly root = projectRoot,
  ) {}

  /** The run of this kind going on, else the last one this process started. */
  last(kind: JobKind): JobRun | undefined {
    return this.entries.get(kind)?.run;
  }

  running(kind: JobKind): boolean {
    const run = this.last(kind);
    return run !== undefined && run.finished_at === null;
  }

  /** Start one; 'running' when one of this kind is going on already (or the web is stopping). */
  start(kind: JobKind): JobRun | 'running' {
    if (this.stopped || this.running(kind)) return 'running';
    const run: JobRun = { kind, pid: undefined, started_at: new Date().toISOString(), finished_at: null, exit_code: null, signal: null, output: [] };
    const child = spawn(process.execPath, COMMANDS[kind].args, {
      cwd: this.root,
      // The databases this web uses, whatever the environment or a running `npm start` would say.
      env: { ...process.env, DATABASE_URL: this.config.DATABASE_URL, READ_DATABASE_URL: this.config.READ_DATABASE_URL },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    run.pid = child.pid;
    const add = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split(/\r?\n|\r/)) if (line.trim() !== '') run.output.push(line);
      if (run.output.length > OUTPUT_LINES) run.output.splice(0, run.output.length - OUTPUT_LINES);
    };
    child.stdout.on('data', add);
    child.stderr.on('data', add);
    const limit = COMMANDS[kind].limitMs;
    const timer = limit
      ? setTimeout(() => {
          run.output.push(`stopped by the web: still running after ${limit / 1000} s`);
          child.kill('SIGTERM');
        }, limit)
      : undefined;
    timer?.unref();
    const exited = new Promise<void>((resolve) => {
      const finish = (code: number | null, signal: string | null) => {
        if (run.finished_at) return;
        clearTimeout(timer);
        run.finished_at = new Date().toISOString();
        run.exit_code = code;
        run.signal = signal;
        this.log.info({ job: kind, pid: run.pid, code, signal }, 'admin job finished');
        resolve();
      };
      child.once('error', (err) => {
        run.output.push(`could not start: ${err.message}`);
        finish(null, null);
      });
      child.once('close', finish);
    });
    this.entries.set(kind, { run, child, exited });
    this.log.info({ job: kind, pid: run.pid }, 'admin job started');
    return run;
  }

  /** Stop every child (SIGTERM, then SIGKILL after 5 s); safe to call twice. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(
      [...this.entries.values()].map(async (e) => {
        if (e.run.finished_at !== null) return;
        e.child?.kill('SIGTERM');
        const kill = setTimeout(() => e.child?.kill('SIGKILL'), 5000);
        await e.exited;
        clearTimeout(kill);
      }),
    );
  }
}
