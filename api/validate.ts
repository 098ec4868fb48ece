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
const label = z.string({ error: 'must be a string' }).trim().min(1, 'must not be empty').max(255, 'must be at most 255 characters');
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
