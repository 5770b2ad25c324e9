#!/usr/bin/env node
// A small Node.js client of the Tandem gateway (tandem.v1.Gateway, remote-control mode).
//
// It loads the .proto files from ../../protos at run time (@grpc/proto-loader), so it
// always speaks the repository's API. `describe` lists behaviors, instances and engine
// settings; `playEpisodes` resets and steps every instance with uniformly random valid
// actions (masked discrete actions are never chosen) until N agent episodes ended.
//
// Usage:
//   node client.js [--address 127.0.0.1:5756] [--episodes 3] [--max-steps 5000]
//                  [--token TOKEN | $TANDEM_TOKEN] [--tls-ca ca.pem] [--seed 0] [--help]
// Prints one JSON line: the Describe summary and the episodes' returns and lengths.

'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

// tandem.v1.DType -> typed array constructor (bytes are little-endian, as on x86 and ARM)
const DTYPES = {
  FLOAT32: Float32Array,
  FLOAT64: Float64Array,
  INT32: Int32Array,
  INT64: BigInt64Array,
  UINT8: Uint8Array,
  BOOL: Uint8Array,
};

function loadApi(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync('tandem/v1/gateway.proto', {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [protoRoot],
  });
  return grpc.loadPackageDefinition(definition).tandem.v1;
}

// Decodes a Tensor message into {dtype, shape, data: TypedArray}; checks the byte length.
function decodeTensor(t, name = 'tensor') {
  const Ctor = DTYPES[t.dtype];
  if (!Ctor) throw new Error(`${name}: unsupported dtype ${t.dtype}`);
  const shape = (t.shape || []).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const bytes = Buffer.from(t.data || []);
  if (bytes.length !== count * Ctor.BYTES_PER_ELEMENT) {
    throw new Error(`${name}: ${bytes.length} bytes do not match shape [${shape}] of ${t.dtype}`);
  }
  const copy = new Uint8Array(bytes); // aligned copy
  return { dtype: t.dtype, shape, data: new Ctor(copy.buffer, 0, count) };
}

// Encodes a typed array with a shape as a Tensor message.
function encodeTensor(dtype, shape, data) {
  const view = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return { dtype, shape, data: Buffer.from(view) };
}

// A tiny deterministic generator (mulberry32), so a seed reproduces a run.
function makeRng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Random valid actions for one BehaviorSteps' decision batch (spec from Describe).
function randomActions(behaviorSteps, spec, rng) {
  const ids = decodeTensor(behaviorSteps.decision.agent_ids, 'decision.agent_ids');
  const n = ids.data.length;
  const action = { instance: behaviorSteps.instance, behavior: behaviorSteps.behavior };
  action.agent_ids = encodeTensor('INT32', [n], ids.data);
  const c = spec.action_spec.continuous_size;
  if (c > 0) {
    const cont = new Float32Array(n * c);
    for (let i = 0; i < cont.length; i++) cont[i] = rng() * 2 - 1;
    action.continuous = encodeTensor('FLOAT32', [n, c], cont);
  }
  const branches = spec.action_spec.discrete_branches.map(Number);
  if (branches.length > 0) {
    const width = branches.reduce((a, b) => a + b, 0);
    const mask = behaviorSteps.decision.action_mask && behaviorSteps.decision.action_mask.data
      ? decodeTensor(behaviorSteps.decision.action_mask, 'decision.action_mask').data
      : new Uint8Array(n * width);
    const disc = new Int32Array(n * branches.length);
    for (let agent = 0; agent < n; agent++) {
      let offset = 0;
      branches.forEach((size, b) => {
        const allowed = [];
        for (let k = 0; k < size; k++) if (!mask[agent * width + offset + k]) allowed.push(k);
        disc[agent * branches.length + b] = allowed.length ? allowed[Math.floor(rng() * allowed.length)] : 0;
        offset += size;
      });
    }
    action.discrete = encodeTensor('INT32', [n, branches.length], disc);
  }
  return action;
}

class GatewayClient {
  // options: {address, token, rootCert (Buffer), deadlineMs}
  constructor({ address = '127.0.0.1:5756', token = null, rootCert = null, deadlineMs = 30000 } = {}) {
    const api = loadApi();
    const credentials = rootCert ? grpc.credentials.createSsl(rootCert) : grpc.credentials.createInsecure();
    this.client = new api.Gateway(address, credentials, {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      'grpc.keepalive_time_ms': 30000,
    });
    this.metadata = new grpc.Metadata();
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
    this.deadlineMs = deadlineMs;
  }

  describe() {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.deadlineMs);
      this.client.Describe({}, this.metadata, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
    });
  }

  // Opens a Play stream; returns {request(msg) -> Promise<PlayResponse>, close()}.
  play() {
    const call = this.client.Play(this.metadata);
    const waiting = [];
    let failure = null;
    call.on('data', (response) => {
      const next = waiting.shift();
      if (next) next.resolve(response);
    });
    call.on('error', (err) => {
      failure = err;
      while (waiting.length) waiting.shift().reject(err);
    });
    call.on('end', () => {
      const err = failure || new Error('the gateway ended the Play stream');
      while (waiting.length) waiting.shift().reject(err);
    });
    return {
      request(message) {
        if (failure) return Promise.reject(failure);
        return new Promise((resolve, reject) => {
          waiting.push({ resolve, reject });
          call.write(message);
        });
      },
      close() {
        call.end();
      },
      cancel() {
        call.cancel();
      },
    };
  }

  // Plays until `episodes` agent episodes ended (or `maxSteps` steps); returns their returns and lengths.
  async playEpisodes({ episodes = 3, maxSteps = 5000, seed = 0 } = {}) {
    const described = await this.describe();
    const specs = Object.fromEntries(described.behaviors.map((b) => [b.name, b]));
    const rng = makeRng(seed);
    const stream = this.play();
    const running = new Map(); // "instance/behavior/agent" -> {reward, length}
    const finished = [];
    let steps = 0;
    let maskedChosen = 0;
    const account = (bs, batch, terminal) => {
      if (!batch || !batch.agent_ids || !batch.agent_ids.data) return;
      const ids = decodeTensor(batch.agent_ids, 'agent_ids').data;
      const rewards = decodeTensor(batch.rewards, 'rewards').data;
      const interrupted = terminal && batch.interrupted && batch.interrupted.data
        ? decodeTensor(batch.interrupted, 'interrupted').data : null;
      ids.forEach((id, i) => {
        const key = `${bs.instance}/${bs.behavior}/${id}`;
        const ep = running.get(key) || { reward: 0, length: 0 };
        ep.reward += rewards[i];
        if (terminal) {
          finished.push({
            instance: bs.instance, behavior: bs.behavior, agent: id,
            return: ep.reward, length: ep.length, interrupted: interrupted ? !!interrupted[i] : false,
          });
          running.delete(key);
        } else {
          ep.length += 1;
          running.set(key, ep);
        }
      });
    };
    try {
      let response = await stream.request({ reset: { environment_parameters: {} } });
      while (finished.length < episodes && steps < maxSteps) {
        const actions = [];
        for (const bs of response.steps.behaviors) {
          account(bs, bs.terminal, true);
          account(bs, bs.decision, false);
          const n = bs.decision.agent_ids && bs.decision.agent_ids.shape.length ? Number(bs.decision.agent_ids.shape[0]) : 0;
          if (n > 0) {
            const action = randomActions(bs, specs[bs.behavior], rng);
            maskedChosen += countMaskedChoices(bs, specs[bs.behavior], action);
            actions.push(action);
          }
        }
        if (finished.length >= episodes) break;
        response = await stream.request({ step: { actions } });
        steps += 1;
      }
    } finally {
      stream.close();
    }
    return { describe: summarize(described), steps, episodes: finished, maskedChosen };
  }

  close() {
    this.client.close();
  }
}

function countMaskedChoices(bs, spec, action) {
  const branches = spec.action_spec.discrete_branches.map(Number);
  if (!branches.length || !bs.decision.action_mask || !bs.decision.action_mask.data) return 0;
  const width = branches.reduce((a, b) => a + b, 0);
  const mask = decodeTensor(bs.decision.action_mask, 'action_mask').data;
  const disc = decodeTensor(action.discrete, 'discrete').data;
  const n = disc.length / branches.length;
  let count = 0;
  for (let agent = 0; agent < n; agent++) {
    let offset = 0;
    branches.forEach((size, b) => {
      if (mask[agent * width + offset + disc[agent * branches.length + b]]) count += 1;
      offset += size;
    });
  }
  return count;
}

function summarize(described) {
  return {
    mode: described.mode,
    api_version: described.api_version,
    behaviors: described.behaviors.map((b) => ({
      name: b.name,
      observations: b.observations.map((o) => ({ name: o.name, shape: o.shape.map(Number) })),
      continuous_size: b.action_spec.continuous_size,
      discrete_branches: b.action_spec.discrete_branches.map(Number),
    })),
    instances: described.instances.map((i) => ({ index: i.index, port: i.port, alive: i.alive, restarts: i.restarts })),
  };
}

const USAGE = `Usage: node client.js [options]

Plays random episodes on a Tandem gateway in remote-control mode (tandem.v1.Gateway)
and prints one JSON line: the Describe summary and the episodes' returns and lengths.

Options:
  --address HOST:PORT  the gateway (default: 127.0.0.1:5756)
  --episodes N         agent episodes to finish (default: 3)
  --max-steps N        give up after this many steps (default: 5000)
  --token TOKEN        bearer token (default: $TANDEM_TOKEN)
  --tls-ca FILE        PEM certificate of the gateway's TLS (default: plaintext)
  --seed N             seed of the random actions (default: 0)
  -h, --help           print this help and exit
`;

// Returns the options, or { help: true } when --help or -h is given.
function parseArgs(argv) {
  if (argv.includes('--help') || argv.includes('-h')) return { help: true };
  const args = { address: '127.0.0.1:5756', episodes: 3, maxSteps: 5000, token: process.env.TANDEM_TOKEN || null, tlsCa: null, seed: 0 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${key}: a value is required`);
    switch (key) {
      case '--address': args.address = value; break;
      case '--episodes': args.episodes = Number(value); break;
      case '--max-steps': args.maxSteps = Number(value); break;
      case '--token': args.token = value; break;
      case '--tls-ca': args.tlsCa = value; break;
      case '--seed': args.seed = Number(value); break;
      default: throw new Error(`unknown option ${key}`);
    }
    i += 1;
  }
  if (!(args.episodes >= 1)) throw new Error('--episodes: must be >= 1');
  return args;
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (err) {
    process.stderr.write(`tandem-gateway-client: ${err.message} (--help lists the options)\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const client = new GatewayClient({
    address: args.address,
    token: args.token,
    rootCert: args.tlsCa ? fs.readFileSync(args.tlsCa) : null,
  });
  try {
    const result = await client.playEpisodes({ episodes: args.episodes, maxSteps: args.maxSteps, seed: args.seed });
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return result.episodes.length >= args.episodes ? 0 : 1;
  } catch (err) {
    process.stderr.write(`tandem-gateway-client: ${err.code !== undefined ? `gRPC ${err.code}: ` : ''}${err.details || err.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

module.exports = { GatewayClient, decodeTensor, encodeTensor, randomActions, loadApi, makeRng, main };

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
