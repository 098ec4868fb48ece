import type { Pool } from './pool.js';
import type { CreateProduct, PatchProduct } from '../api/validate.js';

export interface Product {
  id: number;
  name: string;
  category: string;
  price: string;
  stock: number;
  created_at: string;
}

const COLUMNS = `id, name, category, price::text AS price, stock, created_at`;

export async function insertProduct(pool: Pool, p: CreateProduct): Promise<Product> {
  const { rows } = await pool.query<Product>(
    `INSERT INTO products (name, category, price, stock) VALUES ($1, $2, $3, $4) RETURNING ${COLUMNS}`,
    [p.name, p.category, p.price, p.stock],
  );
  return rows[0]!;
}

export async function getProduct(pool: Pool, id: number): Promise<Product | undefined> {
  const { rows } = await pool.query<Product>(`SELECT ${COLUMNS} FROM products WHERE id = $1`, [id]);
  return rows[0];
}

/** Keyset pagination by id; `after` is the last id of the previous page. */
export async function listProducts(
  pool: Pool,
  opts: { after: number; limit: number; category: string | null },
): Promise<Product[]> {
  const { rows } = await pool.query<Product>(
    `SELECT ${COLUMNS} FROM products
      WHERE id > $1 AND ($2::text IS NULL OR category = $2)
      ORDER BY id LIMIT $3`,
    [opts.after, opts.category, opts.limit],
  );
  return rows;
}

export async function updateProduct(pool: Pool, id: number, p: PatchProduct): Promise<Product | undefined> {
  const { rows } = await pool.query<Product>(
    `UPDATE products SET
        name = COALESCE($2, name),
        category = COALESCE($3, category),
        price = COALESCE($4::numeric, price),
        stock = COALESCE($5, stock)
      WHERE id = $1 RETURNING ${COLUMNS}`,
    [id, p.name ?? null, p.category ?? null, p.price ?? null, p.stock ?? null],
  );
  return rows[0];
}
