/**
 * What one chaos run saw: the violations that fail it, and a timeline of the
 * faults and notable answers that explains them. Commands and background
 * tasks record here instead of throwing, so that one bad answer does not hide
 * the end-of-run invariants: a run reports everything it found.
 */

export type ViolationKind =
  /** A Procfile process exited without the test killing it. */
  | 'process-exit'
  /** A SIGTERM'd process exited non-zero or took longer than 10 s. */
  | 'sigterm'
  /** An HTTP answer outside what the fault model allows (500, a hang, a wrong body, ...). */
  | 'http'
  /** (1) An outbox event that never reached processed_events. */
  | 'lost'
  /** (2) An event applied twice, or an applied id the outbox never had. */
  | 'applied-twice'
  /** (3) A read-model view that differs from the SPEC §3 recomputation. */
  | 'views'
  /** (4) An order the API confirmed that write_db does not hold as confirmed. */
  | 'orders'
  /** (5) Failed/parked events that are not exactly the injected poison. */
  | 'poison'
  /** Stock that does not add up, or went negative. */
  | 'stock'
  /** The pipeline did not drain in time (the other kinds say what was left). */
  | 'drain'
  /** The harness itself could not do its job (a bug here, or the machine). */
  | 'harness';

export interface Violation {
  kind: ViolationKind;
  /** Milliseconds since the run started. */
  at: number;
  message: string;
  /** Long evidence: process output, ids, differences. */
  detail?: string;
}

export interface TimelineEntry {
  at: number;
  text: string;
}

export class Journal {
  readonly started = Date.now();
  readonly violations: Violation[] = [];
  readonly timeline: TimelineEntry[] = [];
  /** Named counters for the per-run summary (faults by kind, answers by status, ...). */
  readonly counts = new Map<string, number>();

  constructor(private readonly echo?: (line: string) => void) {}

  now(): number {
    return Date.now() - this.started;
  }

  violation(kind: ViolationKind, message: string, detail?: string): void {
    const v: Violation = { kind, at: this.now(), message, ...(detail === undefined ? {} : { detail }) };
    this.violations.push(v);
    this.note(`VIOLATION ${kind}: ${message}`);
  }

  note(text: string): void {
    const entry = { at: this.now(), text };
    this.timeline.push(entry);
    this.echo?.(`  [${(entry.at / 1000).toFixed(1).padStart(6)}s] ${text}`);
  }

  count(name: string, by = 1): void {
    this.counts.set(name, (this.counts.get(name) ?? 0) + by);
  }

  countsWithPrefix(prefix: string): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, v] of [...this.counts].sort()) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
    return out;
  }

  /** Every violation, grouped by kind, with details cut to `detailChars` each. */
  report(detailChars = 3000): string {
    if (this.violations.length === 0) return 'no violations';
    const lines: string[] = [`${this.violations.length} violation(s):`];
    for (const v of this.violations) {
      lines.push(`- [${v.kind} @${(v.at / 1000).toFixed(1)}s] ${v.message}`);
      if (v.detail) lines.push(indent(tail(v.detail, detailChars)));
    }
    return lines.join('\n');
  }
}

/**
 * The end of a long text (process output: the crash is at the end), each
 * line cut to 400 characters: pino serialises whole pg clients into some
 * error lines, which would otherwise crowd out everything else.
 */
export function tail(text: string, chars: number): string {
  const lines = text.split('\n').map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l));
  const out: string[] = [];
  let size = 0;
  for (let i = lines.length - 1; i >= 0 && size + lines[i]!.length <= chars; i--) {
    out.unshift(lines[i]!);
    size += lines[i]!.length + 1;
  }
  return out.join('\n');
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `    | ${l}`)
    .join('\n');
}
