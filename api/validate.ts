import { z } from 'zod';
import { ApiError } from './errors.js';

export const MAX_ITEMS = 100;
export const MAX_QUANTITY = 1_000_000;
const INT32_MAX = 2_147_483_647;

const MONEY_TEXT = /^(0|[1-9]\d{0,7})(\.\d{1,2})?$/;

/**
 * Money arrives as a JSON number or string with at most two decimals and
 * leaves as canonical text; it is never used in arithmetic here (PostgreSQL
 * NUMERIC does that). String(number) is the shortest text that reads back as
 * the same double, so 19.99 stays "19.99" and 0.1 + 0.2 style values fail.
 */
export const money = z
  .union([z.number(), z.string()], { error: 'must be a number or a string' })
  .transform((v, ctx) => {
    const text = typeof v === 'number' ? String(v) : v.trim();
    if (!MONEY_TEXT.test(text)) {
      ctx.addIssue({ code: 'custom', message: 'must be an amount from 0 to 99999999.99 with at most two decimals' });
      return z.NEVER;
    }
    return text;
  });

const id = z.int({ error: 'must be a positive integer' }).min(1, 'must be a positive integer').max(INT32_MAX, 'is too large');
/**
 * PostgreSQL stores no NUL character (22021), and a lone UTF-16 surrogate
 * would reach it as U+FFFD, silently changed: text with either is refused.
 */
export function isStorableText(s: string): boolean {
  return s.isWellFormed() && !s.includes('\u0000');
}

/** Text PostgreSQL can store as given; 400 naming the field otherwise. */
export const storableText = z.string({ error: 'must be a string' }).refine(isStorableText, 'must not contain NUL characters or unpaired surrogates');

const label = storableText.trim().min(1, 'must not be empty').max(255, 'must be at most 255 characters');
const stock = z.int({ error: 'must be an integer' }).min(0, 'must be zero or more').max(INT32_MAX, 'is too large');

export const createProductBody = z.strictObject({ name: label, category: label, price: money, stock });
export type CreateProduct = z.infer<typeof createProductBody>;

export const patchProductBody = z
  .strictObject({ name: label.optional(), category: label.optional(), price: money.optional(), stock: stock.optional() })
  .refine((b) => Object.keys(b).length > 0, 'must contain at least one of name, category, price, stock');
export type PatchProduct = z.infer<typeof patchProductBody>;

export const createOrderBody = z.strictObject({
  customer_id: id,
  items: z
    .array(
      z.strictObject({
        product_id: id,
        quantity: z.int({ error: 'must be a positive integer' }).min(1, 'must be a positive integer').max(MAX_QUANTITY, `must be at most ${MAX_QUANTITY}`),
      }),
      { error: 'must be an array' },
    )
    .min(1, 'must contain at least one item')
    .max(MAX_ITEMS, `must contain at most ${MAX_ITEMS} items`),
});

/** ['items', 0, 'quantity'] → "items[0].quantity" */
export function fieldName(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(body)' : out;
}

function toApiError(error: z.ZodError): ApiError {
  const errors = error.issues.map((i) => {
    // An unrecognized key names the key itself, not its parent.
    const keys = i.code === 'unrecognized_keys' ? i.keys : undefined;
    const field = fieldName(keys?.[0] === undefined ? i.path : [...i.path, keys[0]]);
    return { field, message: keys ? 'is not a known field' : i.message };
  });
  const first = errors[0] ?? { field: '(body)', message: 'is invalid' };
  return new ApiError('validation_failed', `${first.field} ${first.message}`, { field: first.field, errors });
}

export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  const result = schema.safeParse(body);
  if (!result.success) throw toApiError(result.error);
  return result.data;
}

/** A positive int32 from a path segment or query value, else 400 naming the parameter. */
export function parseId(value: string | null | undefined, field: string): number {
  if (value === null || value === undefined || !/^[1-9]\d{0,9}$/.test(value) || Number(value) > INT32_MAX) {
    throw new ApiError('validation_failed', `${field} must be a positive integer`, { field });
  }
  return Number(value);
}

export function parseLimit(value: string | null, field = 'limit', def = 50, max = 200): number {
  if (value === null) return def;
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > max) {
    throw new ApiError('validation_failed', `${field} must be an integer from 1 to ${max}`, { field });
  }
  return Number(value);
}

/** A query parameter that reaches PostgreSQL as text: 400 naming it when it cannot be stored. */
export function parseText(value: string | null, field: string, max = 255): string | null {
  if (value === null) return null;
  if (!isStorableText(value) || value.length > max) throw new ApiError('validation_failed', `${field} must be text of at most ${max} characters without NUL characters`, { field });
  return value;
}

/**
 * An instant in ISO-8601 (a date, optionally a time and a zone; UTC when no
 * zone is given), as canonical UTC text. The calendar is checked, not
 * normalised (2026-02-30 is refused, not read as March 2nd), and years run
 * from 1 to 9999 (PostgreSQL has no year 0).
 */
export function parseInstant(value: string | null, field: string): string | null {
  if (value === null) return null;
  const bad = () => new ApiError('validation_failed', `${field} must be an ISO-8601 date or time from year 1 to 9999, e.g. 2026-11-25T08:00:00Z`, { field });
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$/.exec(value);
  if (!m) throw bad();
  const [year, month, day, hour = 0, minute = 0, second = 0] = [m[1], m[2], m[3], m[4], m[5], m[6]].map((x) => (x === undefined ? undefined : Number(x))) as number[];
  const date = new Date(Date.UTC(2000, month! - 1, day!, hour, minute, second));
  date.setUTCFullYear(year!);
  if (year! < 1 || date.getUTCMonth() !== month! - 1 || date.getUTCDate() !== day! || hour > 23 || minute > 59 || second > 59) throw bad();
  const zone = m[8];
  const ms = Date.parse(zone || !value.includes('T') ? value : `${value}Z`);
  if (!Number.isFinite(ms)) throw bad();
  return new Date(ms).toISOString();
}

/** Opaque pagination cursor: base64url of the last id seen. */
export function encodeCursor(lastId: number): string {
  return Buffer.from(String(lastId)).toString('base64url');
}

export function decodeCursor(value: string | null): number {
  if (value === null) return 0;
  const text = Buffer.from(value, 'base64url').toString('utf8');
  if (!/^\d{1,10}$/.test(text) || Number(text) > INT32_MAX) {
    throw new ApiError('validation_failed', 'cursor is not a cursor this API returned', { field: 'cursor' });
  }
  return Number(text);
}
