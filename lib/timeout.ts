/** Reject with "<what>: no answer within <ms> ms" unless p settles first. p keeps running; its result is then ignored. */
export function withTimeout<T>(p: Promise<T>, ms: number, what = 'no answer'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The value, or undefined when p fails or takes longer than ms: for pages that show what they can while a service is away. */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  try {
    return await withTimeout(p, ms);
  } catch {
    return undefined;
  }
}
