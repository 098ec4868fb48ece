import { ApiError } from './errors.js';
import { readJson, sendJson } from './http.js';
import type { Route } from './router.js';
import {
  createProductBody,
  decodeCursor,
  encodeCursor,
  parseBody,
  parseId,
  parseLimit,
  parseText,
  patchProductBody,
} from './validate.js';
import { getProduct, insertProduct, listProducts, updateProduct } from '../db/products.js';

export const productRoutes: Route[] = [
  {
    method: 'POST',
    path: '/products',
    async handler({ req, res, deps }) {
      const body = parseBody(createProductBody, await readJson(req));
      const product = await insertProduct(deps.writeDb, body);
      sendJson(res, 201, product, { Location: `/products/${product.id}` });
    },
  },
  {
    method: 'GET',
    path: '/products',
    async handler({ res, url, deps }) {
      const limit = parseLimit(url.searchParams.get('limit'));
      const after = decodeCursor(url.searchParams.get('cursor'));
      const category = parseText(url.searchParams.get('category'), 'category');
      const items = await listProducts(deps.writeDb, { after, limit, category });
      const last = items.at(-1);
      sendJson(res, 200, { items, next_cursor: items.length === limit && last ? encodeCursor(last.id) : null });
    },
  },
  {
    method: 'GET',
    path: '/products/:id',
    async handler({ res, params, deps }) {
      const product = await getProduct(deps.writeDb, parseId(params[0], 'id'));
      if (!product) throw new ApiError('product_not_found');
      sendJson(res, 200, product);
    },
  },
  {
    method: 'PATCH',
    path: '/products/:id',
    async handler({ req, res, params, deps }) {
      const id = parseId(params[0], 'id');
      const body = parseBody(patchProductBody, await readJson(req));
      const product = await updateProduct(deps.writeDb, id, body);
      if (!product) throw new ApiError('product_not_found');
      sendJson(res, 200, product);
    },
  },
];
