import assert from 'node:assert/strict';
import { ConfigError, getConfig } from '../lib/config.js';
import { tracesEndpoint } from '../lib/tracing.js';

describe('configuration (unit)', () => {
  it('has working defaults, and counts empty strings as unset', () => {
    const config = getConfig({ PORT: '', LOG_LEVEL: '' });
    assert.equal(config.PORT, 3000);
    assert.equal(config.DATABASE_URL, 'postgres://postgres@127.0.0.1:5432/write_db');
    assert.equal(config.LOG_FORMAT, 'json');
    assert.equal(config.REDIS_TLS_INSECURE, false);
  });

  it('names the variable of a bad value in one line, masking passwords and secrets', () => {
    const refusal = (env: Record<string, string>) => {
      try {
        getConfig(env);
      } catch (err) {
        assert.ok(err instanceof ConfigError);
        assert.ok(!err.message.includes('\n'));
        return err.message;
      }
      assert.fail('accepted');
    };
    assert.equal(refusal({ PORT: 'eighty' }), 'PORT: must be a whole number (got "eighty")');
    assert.equal(refusal({ WORKER_CONCURRENCY: '0' }).split(':')[0], 'WORKER_CONCURRENCY');
    assert.match(refusal({ DATABASE_URL: 'mysql://u:hunter2@db/x' }), /^DATABASE_URL: must be a postgres:\/\/ URL/);
    assert.doesNotMatch(refusal({ DATABASE_URL: 'mysql://u:hunter2@db/x' }), /hunter2/);
    assert.doesNotMatch(refusal({ ADMIN_PASSWORD: 'short' }), /short"/);
    assert.equal(refusal({ PG_SSLMODE: 'verify-full' }).split(':')[0], 'PG_SSLMODE');
  });

  it('PG_SSLMODE is added to both database URLs that name none', () => {
    const config = getConfig({ PG_SSLMODE: 'no-verify', READ_DATABASE_URL: 'postgres://h/read_db?sslmode=disable' });
    assert.equal(new URL(config.DATABASE_URL).searchParams.get('sslmode'), 'no-verify');
    assert.equal(new URL(config.READ_DATABASE_URL).searchParams.get('sslmode'), 'disable');
  });

  it('a Redis Cluster wraps the queue prefix in a hash tag', () => {
    assert.equal(getConfig({ REDIS_CLUSTER_NODES: 'a:7000,b:7001' }).QUEUE_PREFIX, '{op}');
    assert.equal(getConfig({ REDIS_CLUSTER_NODES: 'a:7000', QUEUE_PREFIX: '{mine}' }).QUEUE_PREFIX, '{mine}');
  });
});

describe('tracing configuration (unit)', () => {
  it('is on only with an OTLP endpoint, refuses gRPC naming the variable, and OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none turn it off', () => {
    assert.equal(tracesEndpoint(getConfig({})), undefined);
    assert.equal(tracesEndpoint(getConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' })), 'http://collector:4318/v1/traces');
    assert.equal(tracesEndpoint(getConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://b/traces' })), 'https://b/traces');
    assert.equal(tracesEndpoint(getConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_SDK_DISABLED: 'true' })), undefined);
    assert.equal(tracesEndpoint(getConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_TRACES_EXPORTER: 'none' })), undefined);
    assert.throws(() => getConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }), /^ConfigError: OTEL_EXPORTER_OTLP_PROTOCOL: must be http\/protobuf or http\/json/);
    assert.throws(() => getConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }), /OTEL_EXPORTER_OTLP_ENDPOINT: must be an http/);
    assert.throws(() => getConfig({ OTEL_TRACES_SAMPLER_ARG: '1.5' }), /OTEL_TRACES_SAMPLER_ARG/);
    assert.equal(getConfig({ OTEL_TRACES_SAMPLER_ARG: '0.25' }).OTEL_TRACES_SAMPLER_ARG, 0.25);
    assert.deepEqual([getConfig({}).OTEL_BSP_MAX_EXPORT_BATCH_SIZE, getConfig({}).OTEL_BSP_SCHEDULE_DELAY], [128, 200]);
    assert.equal(getConfig({ OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '512' }).OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512);
    assert.throws(() => getConfig({ OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '0' }), /OTEL_BSP_MAX_EXPORT_BATCH_SIZE/);
  });
});
