import type { Projection } from '../projection.js';
import { productSales } from './product-sales.js';
import { categoryMetrics } from './category-metrics.js';
import { customerLtv } from './customer-ltv.js';
import { hourlySales } from './hourly-sales.js';

/**
 * Every projection of the read model. The projector applies each event to
 * all of them in one transaction (with one processed_events row); verify,
 * rebuild, the dashboard and /metrics go through this list. Adding one: a
 * module beside these, a migration for its table, and a line here
 * (docs/projections.md).
 */
export const PROJECTIONS: readonly Projection[] = [productSales, categoryMetrics, customerLtv, hourlySales];
