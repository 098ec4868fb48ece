import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';

/**
 * The process supervisor of `npm start`, a small foreman: runs each Procfile
 * process with its output prefixed by its name, restarts one that exits on
 * its own (up to `restarts` times each, then stops everything: the system
 * runs completely or not at all), and stops them all on stop(): SIGTERM,
 * then SIGKILL after `killTimeoutMs` or at a second stop(). Once stopping,
 * nothing is restarted, whatever its exit code (a process that passes its
 * shutdown deadline exits 1; concurrently, used before, restarted it).
 */
export interface Program {
  name: string;
  /** A shell command line (a Procfile entry); it is exec'd, so signals reach the process itself. */
  command: string;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** An ANSI colour code for the prefix when the output is a terminal. */
  colour?: number;
}

export interface SupervisorOptions {
  restarts: number;
  restartDelayMs: number;
  killTimeoutMs: number;
  /** Where a line goes (default: this process's stdout or stderr). */
  write?: (line: string, stream: 'out' | 'err') => void;
}

interface Running {
  program: Program;
  child: ChildProcess | undefined;
  restartTimer: NodeJS.Timeout | undefined;
  restartsLeft: number;
}

export class Supervisor {
  /** Why it stopped on its own (a process that kept exiting), if it did. */
  failed: string | undefined;
  /** Resolves when every process has exited and none will be restarted. */
  readonly done: Promise<void>;
  private readonly procs: Running[];
  private readonly width: number;
  private readonly write: (line: string, stream: 'out' | 'err') => void;
  private stopping = false;
  private killTimer: NodeJS.Timeout | undefined;
  private settle!: () => void;

  constructor(
    programs: Program[],
    private readonly opts: SupervisorOptions,
  ) {
    this.procs = programs.map((program) => ({ program, child: undefined, restartTimer: undefined, restartsLeft: opts.restarts }));
    this.width = Math.max(0, ...programs.map((p) => p.name.length));
    this.write = opts.write ?? ((line, stream) => (stream === 'out' ? process.stdout : process.stderr).write(`${line}\n`));
    this.done = new Promise((r) => (this.settle = r));
    for (const p of this.procs) this.start(p);
    this.checkDone();
  }

  /** Whether every process is running (none exited or waiting to restart). */
  allRunning(): boolean {
    return !this.stopping && this.procs.every((p) => p.child !== undefined);
  }

  /** First call: SIGTERM to every process, SIGKILL to those left after the kill timeout. Later calls: SIGKILL now. */
  stop(): void {
    if (this.stopping) {
      this.signalAll('SIGKILL');
      return;
    }
    this.stopping = true;
    for (const p of this.procs) {
      clearTimeout(p.restartTimer);
      p.restartTimer = undefined;
    }
    this.signalAll('SIGTERM');
    this.killTimer = setTimeout(() => this.signalAll('SIGKILL'), this.opts.killTimeoutMs);
    this.checkDone();
  }

  private signalAll(signal: NodeJS.Signals): void {
    for (const p of this.procs) if (p.child && p.child.exitCode === null && p.child.signalCode === null) p.child.kill(signal);
  }

  private prefix(p: Program): string {
    const tag = `[${p.name.padEnd(this.width)}]`;
    return process.stdout.isTTY && p.colour !== undefined ? `\x1b[${p.colour}m${tag}\x1b[0m` : tag;
  }

  private start(p: Running): void {
    p.restartTimer = undefined;
    const child = spawn('/bin/sh', ['-c', `exec ${p.program.command}`], { cwd: p.program.cwd, env: p.program.env, stdio: ['ignore', 'pipe', 'pipe'] });
    p.child = child;
    const prefix = this.prefix(p.program);
    for (const [stream, name] of [
      [child.stdout, 'out'],
      [child.stderr, 'err'],
    ] as const) {
      readline.createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => this.write(`${prefix} ${line}`, name));
    }
    child.on('error', (err) => this.write(`${prefix} could not start: ${err.message}`, 'err'));
    child.on('close', (code, signal) => this.exited(p, child, code, signal));
    // 'close' waits for the output to end too: a grandchild holding the pipes must not keep an exited process counted.
    child.on('exit', () => setTimeout(() => (child.stdout.destroy(), child.stderr.destroy()), 2000).unref());
  }

  private exited(p: Running, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (p.child !== child) return;
    p.child = undefined;
    const how = code !== null ? `with code ${code}` : `on ${signal}`;
    const prefix = this.prefix(p.program);
    if (this.stopping) {
      this.write(`${prefix} exited ${how}`, code === 0 ? 'out' : 'err');
    } else if (p.restartsLeft > 0) {
      p.restartsLeft--;
      this.write(`${prefix} exited ${how}; restarting it in ${this.opts.restartDelayMs} ms (${p.restartsLeft} restart${p.restartsLeft === 1 ? '' : 's'} left)`, 'err');
      p.restartTimer = setTimeout(() => this.start(p), this.opts.restartDelayMs);
    } else {
      this.write(`${prefix} exited ${how}; no restarts left: stopping everything`, 'err');
      this.failed ??= `${p.program.name} exited ${how}`;
      this.stop();
    }
    this.checkDone();
  }

  private checkDone(): void {
    if (this.procs.some((p) => p.child !== undefined || p.restartTimer !== undefined)) return;
    clearTimeout(this.killTimer);
    this.settle();
  }
}
