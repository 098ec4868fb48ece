import fc from 'fast-check';
import { commandsArb } from './commands.js';
import { finishRun } from './checks.js';
import { ChaosSystem, type Infra, type SystemOptions } from './system.js';

export interface ChaosOptions {
  seed: number;
  /** fast-check's path of a counterexample: replays that case. */
  path?: string;
  /** fc.commands' replayPath (printed with a shrunk counterexample), needed to replay a shrunk case. */
  replayPath?: string;
  minCommands: number;
  maxCommands: number;
  /**
   * Shrink a failing run (each attempt is a whole run with real processes:
   * minutes). Off by default: the first failure is reported as it is.
   */
  shrinkMs?: number;
  system: Omit<SystemOptions, 'echo'>;
  /** Timeline lines as they happen. */
  echo?: (line: string) => void;
}

/** One execution of the property: one fresh system, one command sequence. */
export interface Execution {
  run: number;
  commands: number;
  faults: Record<string, number>;
  answers: Record<string, number>;
  events: number;
  orders: number;
  poison: number;
  violations: number;
  drainedMs: number;
  ms: number;
  report: string;
  timeline: string;
}

export interface ChaosResult {
  seed: number;
  failed: boolean;
  /** For a failure: what to pass as --path (and --replay-path) to replay it. */
  path: string | null;
  replayPath: string | null;
  /** The commands of the (shrunk) counterexample as fast-check prints them. */
  counterexample: string | null;
  /** Every execution fast-check made (one, unless shrinking). */
  executions: Execution[];
  error: string | null;
}

class ChaosViolations extends Error {
  override name = 'ChaosViolations';
}

/** Systems alive right now, for emergency cleanup on SIGINT or an uncaught error. */
export const liveSystems = new Set<ChaosSystem>();

/**
 * One seed: fast-check generates a command sequence, runs it against a fresh
 * system with asyncModelRun, then heals, drains and checks the invariants.
 */
export async function runChaos(infra: Infra, opts: ChaosOptions): Promise<ChaosResult> {
  const executions: Execution[] = [];
  const property = fc.asyncProperty(commandsArb(opts.minCommands, opts.maxCommands, opts.replayPath), async (cmds) => {
    const t0 = Date.now();
    const sys = await ChaosSystem.create(infra, { ...opts.system, ...(opts.echo ? { echo: opts.echo } : {}) });
    liveSystems.add(sys);
    let end = { events: 0, orders: 0, drainedMs: 0, drained: false };
    try {
      try {
        await fc.asyncModelRun(() => ({ model: sys.model, real: sys }), cmds);
        end = await finishRun(sys);
        sys.journal.note('stopping every process (SIGTERM)');
        await sys.supervisor.stopAll();
      } catch (err) {
        sys.journal.violation('harness', `the run stopped: ${(err as Error).message}`, (err as Error).stack);
      }
    } finally {
      await sys.tearDown();
      liveSystems.delete(sys);
    }
    const j = sys.journal;
    executions.push({
      run: sys.run,
      commands: j.counts.get('commands') ?? 0,
      faults: j.countsWithPrefix('fault:'),
      answers: j.countsWithPrefix('answer:'),
      events: end.events,
      orders: end.orders,
      poison: sys.model.poison.length,
      violations: j.violations.length,
      drainedMs: end.drainedMs,
      ms: Date.now() - t0,
      report: j.report(),
      timeline: j.timeline.map((e) => `[${(e.at / 1000).toFixed(1).padStart(6)}s] ${e.text}`).join('\n'),
    });
    if (j.violations.length > 0) throw new ChaosViolations(j.report());
  });

  const details = await fc.check(property, {
    seed: opts.seed,
    numRuns: 1,
    ...(opts.path === undefined ? {} : { path: opts.path }),
    endOnFailure: opts.shrinkMs === undefined,
    ...(opts.shrinkMs === undefined ? {} : { plugins: [fc.interruptAfterTimeLimit(opts.shrinkMs)] }),
  });
  // A tuple of the property's one argument: the command sequence (its toString lists the commands that ran).
  const found = details.counterexample as readonly unknown[] | null;
  const counterexample = found ? String(found[0]) : null;
  const replayPath = counterexample ? (/replayPath="([^"]*)"/.exec(counterexample)?.[1] ?? null) : null;
  return {
    seed: details.seed,
    failed: details.failed,
    path: details.counterexamplePath,
    // Only a shrunk case needs the commands' replay path.
    replayPath: details.numShrinks > 0 ? replayPath : null,
    counterexample,
    executions,
    error: details.errorInstance instanceof Error ? details.errorInstance.message : details.errorInstance === null ? null : String(details.errorInstance),
  };
}

/** The command line that replays a failure. */
export function replayCommand(r: ChaosResult, extra = ''): string {
  const parts = [`npm run chaos -- --seed ${r.seed}`];
  if (r.path) parts.push(`--path ${r.path}`);
  if (r.replayPath) parts.push(`--replay-path '${r.replayPath}'`);
  if (extra) parts.push(extra);
  return parts.join(' ');
}

/** The counts of one execution as one line. */
export function summarize(e: Execution): string {
  const faults = Object.entries(e.faults)
    .map(([k, v]) => `${k}×${v}`)
    .join(', ');
  return `run ${e.run}: ${e.commands} commands, faults: ${faults || 'none'}; ${e.orders} orders confirmed, ${e.events} events (${e.poison} poison), drained in ${(e.drainedMs / 1000).toFixed(1)} s; ${e.violations === 0 ? 'OK' : `${e.violations} VIOLATION(S)`} in ${(e.ms / 1000).toFixed(0)} s`;
}

/** A failure as a message: what broke, the commands, and how to replay. */
export function failureMessage(r: ChaosResult, extra = ''): string {
  const last = r.executions.at(-1);
  return [
    `chaos run failed — seed ${r.seed}, path ${r.path ?? '(none)'}${r.replayPath ? `, replay path ${r.replayPath}` : ''}`,
    `replay: ${replayCommand(r, extra)}`,
    last ? summarize(last) : '',
    r.error ?? '',
    `commands: ${r.counterexample ?? '(none)'}`,
    last ? `timeline:\n${last.timeline}` : '',
  ]
    .filter((s) => s !== '')
    .join('\n');
}

/** Kill what is left and remove everything, synchronously (SIGINT, 'exit'). */
export function emergencyCleanup(infra: Infra | undefined): void {
  for (const sys of liveSystems) sys.supervisor?.killAll();
  infra?.destroySync();
}
