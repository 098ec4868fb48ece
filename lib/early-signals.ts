/**
 * A process's entry point calls this before it loads anything else: loading
 * the modules takes a moment (longer on a busy machine), and a SIGTERM or
 * SIGINT (or SIGHUP) meanwhile would otherwise end the process by the signal, which a
 * process manager reads as a crash. Nothing has started yet, so stopping
 * means exiting 0. Once runProcess (lib/lifecycle.ts) wires its own handlers,
 * these do nothing.
 */
export function exitOnSignalWhileLoading(): void {
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (process.listenerCount(signal) === 1) process.exit(0);
    });
  }
}
