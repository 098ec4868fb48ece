/**
 * Secrets never reach a log line or an error message: passwords inside
 * connection URLs are masked, and the values of secret settings are never
 * shown at all.
 */
export const SECRET_SETTINGS = new Set(['ADMIN_PASSWORD', 'METRICS_TOKEN']);

/** "postgres://app:TopSecret@db/x" → "postgres://app:***@db/x", anywhere in a text. */
export function maskUrls(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/[^\s:/@"']*):[^\s@/"']*@/gi, '$1:***@');
}
