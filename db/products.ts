import { z } from 'zod';
import { sql, type Db } from './pool.js';
import type { CreateProduct, PatchProduct } from '../api/validate.js';

export const product = z.object({ id: z.number(), name: z.string(), category: z.string(), price: z.string(), stock: z.number(), created_at: z.string() });
export type Product = z.infer<typeof product>;

const COLUMNS = sql.fragment`id, name, category, price::text AS price, stock, created_at`;

export function insertProduct(db: Db, p: CreateProduct): Promise<Product> {
  return db.one(sql.type(product)`
    INSERT INTO products (name, category, price, stock) VALUES (${p.name}, ${p.category}, ${p.price}, ${p.stock}) RETURNING ${COLUMNS}`);
}

export async function getProduct(db: Db, id: number): Promise<Product | undefined> {
  return (await db.maybeOne(sql.type(product)`SELECT ${COLUMNS} FROM products WHERE id = ${id}`)) ?? undefined;
}

/** Keyset pagination by id; `after` is the last id of the previous page. */
export function listProducts(db: Db, opts: { after: number; limit: number; category: string | null }): Promise<readonly Product[]> {
  return db.any(sql.type(product)`
    SELECT ${COLUMNS} FROM products
     WHERE id > ${opts.after} AND (${opts.category}::text IS NULL OR category = ${opts.category})
     ORDER BY id LIMIT ${opts.limit}`);
}

export async function updateProduct(db: Db, id: number, p: PatchProduct): Promise<Product | undefined> {
  const row = await db.maybeOne(sql.type(product)`
    UPDATE products SET
        name = COALESCE(${p.name ?? null}, name),
        category = COALESCE(${p.category ?? null}, category),
        price = COALESCE(${p.price ?? null}::numeric, price),
        stock = COALESCE(${p.stock ?? null}::int, stock)
      WHERE id = ${id} RETURNING ${COLUMNS}`);
  return row ?? undefined;
}
