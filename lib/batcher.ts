/**
 * Group commit: each caller hands its item here and waits; items are flushed
 * together when `size` have gathered or `waitMs` after the first one arrived
 * (0: at the end of the current event-loop turn), and every waiter gets the
 * batch's outcome. Only `maxInFlight` batches run at once: while they commit,
 * the next one gathers, so batches grow with the load instead of many small
 * transactions queueing on the same rows. Used by the projector (BullMQ jobs
 * → one read_db transaction) and by order intake (POST /orders → one
 * place_orders call).
 */
export class Batcher<T, R> {
  private pending: { item: T; resolve: (r: R) => void; reject: (e: unknown) => void }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private inFlight = new Set<Promise<void>>();

  constructor(
    /** Flushes a batch: one result per item, in the items' order. */
    private readonly flushFn: (items: T[]) => Promise<R[]>,
    private readonly size: number,
    private readonly waitMs: number,
    private readonly maxInFlight = 1,
  ) {}

  submit(item: T): Promise<R> {
    const { promise, resolve, reject } = Promise.withResolvers<R>();
    this.pending.push({ item, resolve, reject });
    if (this.pending.length >= this.size) this.flush();
    else if (this.waitMs === 0) this.immediate ??= setImmediate(() => this.flush());
    else this.timer ??= setTimeout(() => this.flush(), this.waitMs);
    return promise;
  }

  /** Resolves when every item submitted so far has been flushed and settled. */
  async drain(): Promise<void> {
    while (this.pending.length > 0 || this.inFlight.size > 0) {
      this.flush();
      await Promise.allSettled([...this.inFlight]);
    }
  }

  private flush(): void {
    clearTimeout(this.timer);
    clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
    if (this.pending.length === 0 || this.inFlight.size >= this.maxInFlight) return;
    const batch = this.pending.splice(0, this.size);
    const run = this.flushFn(batch.map((b) => b.item)).then(
      (results) => {
        batch.forEach((b, i) => b.resolve(results[i] as R));
      },
      (err: unknown) => batch.forEach((b) => b.reject(err)),
    );
    this.inFlight.add(run);
    void run.finally(() => {
      this.inFlight.delete(run);
      // What gathered meanwhile goes next, without waiting for the timer.
      if (this.pending.length > 0) this.flush();
    });
  }
}
