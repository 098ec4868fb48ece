import fc from 'fast-check';
import { sleep } from '../support/pipeline.js';
import { CATALOGUE, type Model, type OrderBody, type PoisonKind, type Transition } from './model.js';
import { placeOrder, readOwnWrite, replayOrder, resolvePending, transition } from './traffic.js';
import type { ChaosSystem } from './system.js';
import type { Role } from './supervisor.js';

/**
 * The fast-check commands of a chaos run. Every random choice is a command
 * parameter (which web, which order, how long a fault lasts), so a seed and
 * path give the same command sequence again; which order "pick 7" names
 * still depends on the answers the run got, as it must with real processes.
 */
type Cmd = fc.AsyncCommand<Model, ChaosSystem>;

/** At most this many poison events per run: each one holds the reconciler's watermark. */
const MAX_POISON = 3;

interface LineSpec {
  p: number;
  q: number;
}

function toBody(m: Model, customer: number, lines: LineSpec[]): OrderBody {
  return { customer_id: customer, items: lines.map((l) => ({ product_id: m.products[l.p % m.products.length]!.id, quantity: l.q })) };
}

/** Every command that runs is counted; traffic commands also go to the timeline (faults note themselves). */
function step(sys: ChaosSystem, cmd: Cmd, note = true): void {
  sys.journal.count('commands');
  if (note) sys.journal.note(`> ${cmd.toString()}`);
}

const showLines = (lines: LineSpec[]) => lines.map((l) => `p${l.p}x${l.q}`).join('+');

// --- traffic ----------------------------------------------------------------

class PlaceOrder implements Cmd {
  constructor(
    readonly web: number,
    readonly customer: number,
    readonly lines: LineSpec[],
    readonly keyed: boolean,
    readonly replay: boolean,
  ) {}
  check(): boolean {
    return true;
  }
  async run(m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this);
    const body = toBody(m, this.customer, this.lines);
    const key = this.keyed ? sys.newKey() : undefined;
    const o = await placeOrder(sys, m, this.web, body, key);
    if (this.replay && key !== undefined && o.kind === 'response' && o.status === 201) {
      const first = m.orders.find((x) => x.key === key);
      if (first) await replayOrder(sys, m, this.web + 1, body, key, first);
    }
  }
  toString(): string {
    return `PlaceOrder(web${this.web},c${this.customer},${showLines(this.lines)}${this.keyed ? ',keyed' : ''}${this.replay ? ',replay' : ''})`;
  }
}

/** Orders arriving together: unkeyed ones share a write_db transaction (group commit). */
class Burst implements Cmd {
  constructor(
    readonly web: number,
    readonly orders: { customer: number; lines: LineSpec[]; keyed: boolean }[],
  ) {}
  check(): boolean {
    return true;
  }
  async run(m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this);
    await Promise.all(this.orders.map((o) => placeOrder(sys, m, this.web, toBody(m, o.customer, o.lines), o.keyed ? sys.newKey() : undefined)));
  }
  toString(): string {
    return `Burst(web${this.web},[${this.orders.map((o) => `c${o.customer}:${showLines(o.lines)}${o.keyed ? ':keyed' : ''}`).join(' ')}])`;
  }
}

class ChangeOrder implements Cmd {
  constructor(
    readonly verb: Transition,
    readonly pick: number,
    readonly web: number,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.orders.length > 0;
  }
  async run(m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this);
    await transition(sys, m, m.orders[this.pick % m.orders.length]!, this.verb, this.web);
  }
  toString(): string {
    return `${this.verb[0]!.toUpperCase()}${this.verb.slice(1)}(order#${this.pick},web${this.web})`;
  }
}

class ReadOwnWrite implements Cmd {
  constructor(
    readonly pick: number,
    readonly web: number,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.orders.length > 0;
  }
  async run(m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this);
    // The newest orders are the interesting ones: their events may still be on the way.
    const recent = m.orders.slice(-5);
    await readOwnWrite(sys, recent[this.pick % recent.length]!, this.web);
  }
  toString(): string {
    return `ReadOwnWrite(recent#${this.pick},web${this.web})`;
  }
}

class RetryAmbiguous implements Cmd {
  constructor(
    readonly pick: number,
    readonly web: number,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.pending.length > 0;
  }
  async run(m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this);
    await resolvePending(sys, m, this.pick, this.web);
  }
  toString(): string {
    return `RetryAmbiguous(#${this.pick},web${this.web})`;
  }
}

class Wait implements Cmd {
  constructor(readonly ms: number) {}
  check(): boolean {
    return true;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this);
    await sleep(this.ms);
  }
  toString(): string {
    return `Wait(${this.ms})`;
  }
}

// --- faults -------------------------------------------------------------------

class Kill9 implements Cmd {
  constructor(
    readonly role: Role,
    readonly pick: number,
    readonly restartMs: number,
  ) {}
  check(): boolean {
    return true;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    if (await sys.faults.kill9(this.role, this.pick, this.restartMs)) sys.journal.count(`fault:kill9 ${this.role}`);
  }
  toString(): string {
    return `Kill9(${this.role}#${this.pick},restart+${this.restartMs})`;
  }
}

class Sigterm implements Cmd {
  constructor(
    readonly role: Role,
    readonly pick: number,
    readonly restartMs: number,
  ) {}
  check(): boolean {
    return true;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    if (sys.faults.sigterm(this.role, this.pick, this.restartMs)) sys.journal.count(`fault:sigterm ${this.role}`);
  }
  toString(): string {
    return `Sigterm(${this.role}#${this.pick},restart+${this.restartMs})`;
  }
}

class StopPostgres implements Cmd {
  /** `immediate` is a crash: commits made without waiting for the disk (the relay's, the projector's) may be undone. */
  constructor(
    readonly ms: number,
    readonly mode: 'fast' | 'immediate',
  ) {}
  check(m: Readonly<Model>): boolean {
    return !m.faults.pgDown;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    sys.journal.count(`fault:postgres stop ${this.mode}`);
    await sys.faults.stopPostgres(this.ms, this.mode);
  }
  toString(): string {
    return `StopPostgres(${this.ms}, ${this.mode})`;
  }
}

class BlockReadDb implements Cmd {
  constructor(readonly ms: number) {}
  check(m: Readonly<Model>): boolean {
    return !m.faults.pgDown && !m.faults.readDbBlocked;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    sys.journal.count('fault:read_db unavailable');
    await sys.faults.blockReadDb(this.ms);
  }
  toString(): string {
    return `BlockReadDb(${this.ms})`;
  }
}

class StallCommits implements Cmd {
  constructor(readonly ms: number) {}
  check(m: Readonly<Model>): boolean {
    return !m.faults.pgDown && !m.faults.commitStall;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    sys.journal.count('fault:commits stalled');
    await sys.faults.stallCommits(this.ms);
  }
  toString(): string {
    return `StallCommits(${this.ms})`;
  }
}

class TerminateListeners implements Cmd {
  check(m: Readonly<Model>): boolean {
    return !m.faults.pgDown;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    sys.journal.count('fault:LISTEN terminated');
    await sys.faults.terminateListeners();
  }
  toString(): string {
    return 'TerminateListeners';
  }
}

class FlushRedis implements Cmd {
  check(m: Readonly<Model>): boolean {
    return !m.faults.redisDown;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    sys.journal.count('fault:redis flushall');
    await sys.faults.flushRedis();
  }
  toString(): string {
    return 'FlushRedis';
  }
}

class KillRedis implements Cmd {
  constructor(readonly ms: number) {}
  check(m: Readonly<Model>): boolean {
    return !m.faults.redisDown;
  }
  async run(_m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    sys.journal.count('fault:redis kill -9');
    await sys.faults.killRedis(this.ms);
  }
  toString(): string {
    return `KillRedis(${this.ms})`;
  }
}

class Poison implements Cmd {
  constructor(readonly kind: PoisonKind) {}
  check(m: Readonly<Model>): boolean {
    return m.poison.length < MAX_POISON;
  }
  async run(m: Model, sys: ChaosSystem): Promise<void> {
    step(sys, this, false);
    sys.journal.count(`fault:poison ${this.kind}`);
    const eventId = await sys.faults.insertPoison(this.kind, m.poison.length + 1);
    m.poison.push({ eventId, kind: this.kind });
  }
  toString(): string {
    return `Poison(${this.kind})`;
  }
}

// --- arbitraries ----------------------------------------------------------------

const web = fc.nat({ max: 7 });
const pick = fc.nat({ max: 1000 });
const customer = fc.integer({ min: 1, max: 20 });
const lines = fc.uniqueArray(fc.record({ p: fc.nat({ max: CATALOGUE.length - 1 }), q: fc.integer({ min: 1, max: 5 }) }), { minLength: 1, maxLength: 3, selector: (l) => l.p });
/** Webs are killed less often: with both down, traffic only meets refused connections. */
const role = fc.oneof(
  { weight: 1, arbitrary: fc.constant<Role>('web') },
  { weight: 2, arbitrary: fc.constant<Role>('relay') },
  { weight: 2, arbitrary: fc.constant<Role>('worker') },
);
const restartMs = fc.integer({ min: 100, max: 2000 });

/** Every command, weighted: about two thirds traffic and waiting, one third faults. */
export const commandArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 20, arbitrary: fc.tuple(web, customer, lines, fc.boolean(), fc.boolean()).map(([w, c, l, k, r]) => new PlaceOrder(w, c, l, k || r, r)) },
  { weight: 8, arbitrary: fc.tuple(web, fc.array(fc.record({ customer, lines, keyed: fc.boolean() }), { minLength: 2, maxLength: 8 })).map(([w, o]) => new Burst(w, o)) },
  { weight: 12, arbitrary: fc.tuple(fc.constantFrom<Transition>('pay', 'ship', 'cancel'), pick, web).map(([v, p, w]) => new ChangeOrder(v, p, w)) },
  { weight: 5, arbitrary: fc.tuple(pick, web).map(([p, w]) => new ReadOwnWrite(p, w)) },
  { weight: 4, arbitrary: fc.tuple(pick, web).map(([p, w]) => new RetryAmbiguous(p, w)) },
  { weight: 10, arbitrary: fc.integer({ min: 200, max: 2500 }).map((ms) => new Wait(ms)) },
  { weight: 6, arbitrary: fc.tuple(role, pick, restartMs).map(([r, p, ms]) => new Kill9(r, p, ms)) },
  { weight: 4, arbitrary: fc.tuple(role, pick, restartMs).map(([r, p, ms]) => new Sigterm(r, p, ms)) },
  { weight: 3, arbitrary: fc.tuple(fc.integer({ min: 1000, max: 5000 }), fc.constantFrom('fast' as const, 'immediate' as const)).map(([ms, mode]) => new StopPostgres(ms, mode)) },
  { weight: 3, arbitrary: fc.integer({ min: 1000, max: 5000 }).map((ms) => new BlockReadDb(ms)) },
  { weight: 3, arbitrary: fc.integer({ min: 1000, max: 3000 }).map((ms) => new StallCommits(ms)) },
  { weight: 2, arbitrary: fc.constant(new TerminateListeners()) },
  { weight: 2, arbitrary: fc.constant(new FlushRedis()) },
  { weight: 2, arbitrary: fc.integer({ min: 200, max: 3000 }).map((ms) => new KillRedis(ms)) },
  { weight: 3, arbitrary: fc.constantFrom<PoisonKind>('malformed', 'overflow').map((k) => new Poison(k)) },
);

/**
 * At least `min` commands when generating, any number when shrinking. A
 * plain .filter() would filter the shrinks too (fc.commands shrinks first by
 * dropping the commands after the failure), and it reads `.value`, which
 * leaves the shrinker blind (see below): no shrink at all.
 */
class AtLeast extends fc.Arbitrary<Iterable<Cmd>> {
  constructor(
    private readonly arb: fc.Arbitrary<Iterable<Cmd>>,
    private readonly min: number,
  ) {
    super();
  }
  generate(mrng: fc.Random, biasFactor: number | undefined): fc.Value<Iterable<Cmd>> {
    for (;;) {
      const v = this.arb.generate(mrng, biasFactor);
      // value_, not value: the first read of .value hands out the original commands, whose
      // "has run" flags the shrinker reads later; a read here would give the run a clone.
      if ([...v.value_].length >= this.min) return v;
    }
  }
  canShrinkWithoutContext(value: unknown): value is Iterable<Cmd> {
    return this.arb.canShrinkWithoutContext(value);
  }
  shrink(value: Iterable<Cmd>, context: unknown): fc.Stream<fc.Value<Iterable<Cmd>>> {
    return this.arb.shrink(value, context);
  }
}

/** A run's command sequence: between min and max commands (fc.commands alone picks a length from 0 up). */
export function commandsArb(min: number, max: number, replayPath?: string): fc.Arbitrary<Iterable<Cmd>> {
  return new AtLeast(fc.commands([commandArb], { maxCommands: max, size: 'max', ...(replayPath === undefined ? {} : { replayPath }) }), min);
}
