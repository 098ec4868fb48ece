import { pgCode, pgDetail } from '../db/pool.js';
import { SQLSTATES } from '../lib/contract.js';

/**
 * Every error the API answers with, by stable machine code. This table is the
 * one place a code gets its HTTP status and title (RFC 9457 problem details).
 */
export const PROBLEMS = {
  validation_failed: { status: 400, title: 'The request is not valid' },
  malformed_json: { status: 400, title: 'The body is not valid JSON' },
  unauthorized: { status: 401, title: 'Authentication required' },
  forbidden: { status: 403, title: 'Not allowed from here' },
  not_found: { status: 404, title: 'No such resource' },
  product_not_found: { status: 404, title: 'No such product' },
  order_not_found: { status: 404, title: 'No such order' },
  method_not_allowed: { status: 405, title: 'Method not allowed on this resource' },
  insufficient_stock: { status: 409, title: 'Not enough stock to fill the order' },
  invalid_transition: { status: 409, title: 'The order cannot change to that status' },
  event_conflict: { status: 409, title: 'The event cannot take that action in its current state' },
  payload_too_large: { status: 413, title: 'The body is larger than this resource takes' },
  unsupported_media_type: { status: 415, title: 'The body is not of a type this resource takes' },
  unknown_product: { status: 422, title: 'The order names a product that does not exist' },
  idempotency_key_reused: { status: 422, title: 'The Idempotency-Key was used with a different request' },
  total_out_of_range: { status: 422, title: 'The order total exceeds the largest amount a total can hold' },
  too_many_requests: { status: 429, title: 'Too many requests' },
  request_header_fields_too_large: { status: 431, title: 'The request headers are too large' },
  request_timeout: { status: 408, title: 'The request took too long to arrive' },
  bad_request: { status: 400, title: 'The request is not valid HTTP' },
  internal_error: { status: 500, title: 'Internal server error' },
  service_unavailable: { status: 503, title: 'A backing service is unavailable' },
  overloaded: { status: 503, title: 'The server is busy' },
  shutting_down: { status: 503, title: 'The server is stopping' },
  consistency_timeout: { status: 504, title: 'The read model did not catch up in time' },
} as const;

export type ProblemCode = keyof typeof PROBLEMS;

export class ApiError extends Error {
  constructor(
    readonly code: ProblemCode,
    readonly detail?: string,
    /** Extra members of the problem document (field, errors, ...). */
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(detail ?? PROBLEMS[code].title);
    this.name = 'ApiError';
  }

  get status(): number {
    return PROBLEMS[this.code].status;
  }
}

export function problemBody(err: ApiError, instance?: string): Record<string, unknown> {
  return {
    type: `https://order-pipeline.dev/problems/${err.code.replace(/_/g, '-')}`,
    title: PROBLEMS[err.code].title,
    status: err.status,
    code: err.code,
    ...(err.detail === undefined ? {} : { detail: err.detail }),
    ...(instance === undefined ? {} : { instance }),
    ...err.extra,
  };
}

function parseDetail(detail: unknown): unknown {
  if (typeof detail !== 'string') return undefined;
  try {
    return JSON.parse(detail);
  } catch {
    return detail;
  }
}

/** Errors raised by the SQL functions (SQLSTATEs of lib/contract.ts) and data-range errors. */
export function fromDatabaseError(err: unknown): ApiError | undefined {
  const code = pgCode(err);
  const detail = parseDetail(pgDetail(err));
  switch (code) {
    case SQLSTATES.insufficient_stock:
      return new ApiError('insufficient_stock', 'Some products do not have the requested quantity in stock', {
        shortages: detail,
      });
    case SQLSTATES.unknown_product:
      return new ApiError('unknown_product', `Product ${String(detail)} does not exist`, {
        product_id: Number(detail),
      });
    case SQLSTATES.idempotency_key_reused:
      return new ApiError(
        'idempotency_key_reused',
        'This Idempotency-Key was first used with a different body; use a new key for a new order',
      );
    case SQLSTATES.order_not_found:
      return new ApiError('order_not_found');
    case SQLSTATES.invalid_transition:
      return new ApiError('invalid_transition', `The order is ${String(detail)}`, { current_status: detail });
    case '22003': // numeric_value_out_of_range: total beyond DECIMAL(10,2)
      return new ApiError('total_out_of_range', 'The order total must be below 100000000.00');
    default:
      return undefined;
  }
}
