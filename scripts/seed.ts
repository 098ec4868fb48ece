import { sql, type Db } from '../db/pool.js';

const CATALOGUE: Record<string, [string, string][]> = {
  books: [['The Pragmatic Programmer', '39.95'], ['Designing Data-Intensive Applications', '44.99'], ['SQL Performance Explained', '29.00'], ['Release It!', '34.50']],
  coffee: [['Ethiopia Yirgacheffe 250 g', '12.90'], ['Colombia Huila 250 g', '11.50'], ['Espresso blend 1 kg', '32.00'], ['Paper filters ×100', '4.99']],
  kitchen: [['Chef knife', '89.00'], ['Cast-iron pan', '54.95'], ['Digital scale', '19.99'], ['Pour-over kettle', '64.00']],
  garden: [['Pruning shears', '24.90'], ['Watering can', '17.50'], ['Seed starter kit', '14.99'], ['Raised bed', '129.00']],
  toys: [['Wooden blocks', '27.00'], ['Kite', '15.95'], ['Puzzle 1000 pieces', '18.49'], ['Yo-yo', '3.10']],
};

/** A small demo catalogue for `npm start` (unless `--no-seed`); leaves a catalogue that has products alone. Returns how many it added. */
export async function seedCatalogue(db: Db): Promise<number> {
  if (await db.exists(sql.typeAlias('void')`SELECT FROM products`)) return 0;
  const entries = Object.entries(CATALOGUE).flatMap(([category, items]) => items.map(([name, price]) => [name, category, price, 10_000]));
  await db.query(sql.typeAlias('void')`INSERT INTO products (name, category, price, stock) SELECT * FROM ${sql.unnest(entries, ['text', 'text', 'numeric', 'int4'])}`);
  return entries.length;
}
