// kfn's Runtime API client for Node.js: the loop every Node.js execution environment runs.
//
// It does what AWS's Node.js runtime does (aws-lambda-nodejs-runtime-interface-client), leanly and
// without dependencies: load the handler named by _HANDLER ("dir/file.export.nested") from
// LAMBDA_TASK_ROOT (.js, .mjs or .cjs; ES modules by import(), CommonJS by require), poll
// `GET .../invocation/next` over one keep-alive connection, call the handler with the event and a
// Lambda context, post the result to `.../response` or the error to `.../error`, and poll again.
// One invocation at a time, for the life of the process: module state persists across invocations
// of one environment, as on Lambda, and is never shared with another.
//
// Handlers may be async, return a promise, or take Lambda's callback (with
// context.callbackWaitsForEmptyEventLoop: by default a callback's result is posted only once the
// event loop is empty, through 'beforeExit', as AWS does). console.* lines carry the timestamp, the
// request id and the level (AWS_LAMBDA_LOG_FORMAT=JSON and AWS_LAMBDA_LOG_LEVEL as on Lambda).
// An init error is posted to `.../init/error`, an uncaught exception or unhandled rejection fails
// the invocation it happened in; both end the process, as on Lambda. Response-streaming handlers
// (awslambda.streamifyResponse) run too, their stream answered whole once it ends. ES modules find
// packages on NODE_PATH (the function's requirements) too, which Node.js alone does not do.
//
// The connection is raw HTTP/1.1 over `net`: a result and the next poll go out in one write
// (pipelining), which kfn's instance host answers in one write too. Any Runtime API server that
// speaks HTTP/1.1 with Content-Length framing works.
//
// Usage: node ric.mjs   (AWS_LAMBDA_RUNTIME_API, _HANDLER and LAMBDA_TASK_ROOT in the environment)

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import Module, { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import util from 'node:util';

const PREFIX = '/2018-06-01/runtime';
const NEXT = `GET ${PREFIX}/invocation/next HTTP/1.1\r\nHost: runtime\r\n\r\n`;
// kfn's host answers a posted result with exactly these bytes (kfn_runtime.contract.RUNTIME_API_ACCEPTED).
const ACCEPTED = Buffer.from('HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n'
  + 'Content-Length: 15\r\n\r\n{"status":"OK"}', 'latin1');
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
const MAX_HEAD = 64 * 1024;
const EXIT_UNCAUGHT = 129;             // AWS's exit codes after an uncaught exception
const EXIT_UNHANDLED_REJECTION = 128;  // and after an unhandled rejection
const FATAL_POST_TIMEOUT_MS = 2000;
const REQUEST_ID = Symbol.for('aws.lambda.runtime.requestId');   // where AWS's runtime keeps it, too
const STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const TRACE = Symbol('kfn.trace');   // a trace to report instead of the error's own stack
const localRequire = createRequire(import.meta.url);

// -- errors, as AWS's Node.js runtime reports them ----------------------------------------------

function runtimeError(name) {
  const cls = class extends Error {};
  Object.defineProperty(cls, 'name', { value: name });
  cls.prototype.name = `Runtime.${name}`;
  return cls;
}
const ImportModuleError = runtimeError('ImportModuleError');
const HandlerNotFound = runtimeError('HandlerNotFound');
const MalformedHandlerName = runtimeError('MalformedHandlerName');
const UserCodeSyntaxError = runtimeError('UserCodeSyntaxError');
const MalformedStreamingHandler = runtimeError('MalformedStreamingHandler');
const UnmarshalError = runtimeError('UnmarshalError');
class NodeJsExit extends Error {
  constructor() {
    super('The Lambda runtime client detected an unexpected Node.js exit code. This is most commonly caused by '
      + 'a Promise that was never settled. For more information, see '
      + 'https://nodejs.org/docs/latest/api/process.html#exit-codes');
  }
}
NodeJsExit.prototype.name = 'Runtime.NodeJsExit';
class UnhandledPromiseRejection extends Error {
  constructor(reason, promise) {
    super(reason);
    this.reason = reason;
    this.promise = promise;
  }
}
UnhandledPromiseRejection.prototype.name = 'Runtime.UnhandledPromiseRejection';

function isErrorLike(e) {
  return e && typeof e.name === 'string' && typeof e.message === 'string' && typeof e.stack === 'string'
    && e.name && e.message && e.stack;
}

/** Lambda's error object: {errorType, errorMessage, trace}. */
function errorObject(error) {
  try {
    if (util.types.isNativeError(error) || isErrorLike(error)) {
      const trace = (error[TRACE] ?? error.stack ?? '').replaceAll('\x7F', '%7F').split('\n');
      return { errorType: String(error.name).replaceAll('\x7F', '%7F'),
               errorMessage: String(error.message).replaceAll('\x7F', '%7F'), trace };
    }
    return { errorType: typeof error, errorMessage: String(error), trace: [] };
  } catch {
    return { errorType: 'handled', errorMessage: 'callback called with Error argument, but there was a problem '
      + 'while retrieving one or more of its message, name, and stack' };
  }
}

function intoError(e) {
  return e instanceof Error ? e : new Error(e);
}

/** How AWS's runtime prints an error after "Invoke Error" or "Uncaught Exception". */
function formatted(error) {
  try {
    return '\t' + JSON.stringify(error, (_key, value) => {
      if (!(value instanceof Error)) return value;
      const out = { errorType: value.name, errorMessage: value.message, code: value.code, ...value };
      if (typeof value.stack === 'string') out.stack = (value[TRACE] ?? value.stack).split('\n');
      return out;
    });
  } catch {
    return '\t' + JSON.stringify(errorObject(error));
  }
}

// -- logging -------------------------------------------------------------------------------------

function patchConsole() {
  const json = process.env.AWS_LAMBDA_LOG_FORMAT?.toUpperCase() === 'JSON';
  const levels = { TRACE: 1, DEBUG: 2, INFO: 3, WARN: 4, ERROR: 5, FATAL: 6 };
  const minimum = levels[process.env.AWS_LAMBDA_LOG_LEVEL?.toUpperCase()] ?? levels.TRACE;
  const out = process.stdout;
  const text = (level, args) => {
    const line = `${new Date().toISOString()}\t${globalThis[REQUEST_ID]}\t${level}\t${util.format(...args)}`;
    out.write(line.replace(/\n/g, '\r') + '\n');
  };
  const structured = (level, args) => {
    const record = { timestamp: new Date().toISOString(), level, requestId: globalThis[REQUEST_ID] };
    let line;
    if (args.length === 1) {
      record.message = args[0];
      try {
        line = JSON.stringify(record, (_key, value) => (value instanceof Error ? {
          errorType: value.constructor?.name ?? 'UnknownError', errorMessage: value.message,
          stackTrace: typeof value.stack === 'string' ? value.stack.split('\n') : value.stack, ...value,
        } : value));
      } catch {
        record.message = util.format(record.message);
        line = JSON.stringify(record);
      }
    } else {
      record.message = util.format(...args);
      const error = args.find((a) => a instanceof Error);
      if (error) {
        record.errorType = error.constructor?.name ?? 'UnknownError';
        record.errorMessage = error.message;
        record.stackTrace = typeof error.stack === 'string' ? error.stack.split('\n') : [];
      }
      line = JSON.stringify(record);
    }
    out.write(line.replace(/\n/g, '\r') + '\n');
  };
  const log = json ? structured : text;
  const method = (level) => (levels[level] >= minimum ? (...args) => log(level, args) : () => {});
  console.trace = method('TRACE');
  console.debug = method('DEBUG');
  console.info = method('INFO');
  console.log = console.info;
  console.warn = method('WARN');
  console.error = method('ERROR');
  console.fatal = (...args) => log('FATAL', args);
  return json ? (message, error) => console.error(intoError(error))
    : (message, error) => console.error(message, formatted(intoError(error)));
}

// -- the Runtime API connection ---------------------------------------------------------------------

class ApiClosed extends Error {}

/** HTTP/1.1 to the Runtime API over one connection; answers are matched to requests in order. */
class RuntimeClient {
  constructor(address) {
    const at = address.lastIndexOf(':');
    if (!address || at < 0) throw new Error(`AWS_LAMBDA_RUNTIME_API must be host:port (got '${address}')`);
    this.host = address.slice(0, at).replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
    this.port = Number(address.slice(at + 1));
    this.chunks = [];       // what has arrived of the next answer(s)
    this.size = 0;
    this.need = 0;          // bytes needed before the first answer is whole, when known
    this.waiters = [];      // a handler(error, answer) per request sent, in order
    this.closed = null;     // why the connection ended
    // `onread` hands reads over without the readable-stream machinery: measurably less per invocation.
    // The buffer is reused, so what arrives is copied out (answers outlive the read).
    const onread = { buffer: Buffer.allocUnsafe(64 * 1024),
                     callback: (n, buffer) => this.received(Buffer.from(buffer.subarray(0, n))) };
    this.socket = net.connect({ host: this.host, port: this.port, noDelay: true, onread });
    this.socket.on('error', (e) => this.fail(e));
    this.socket.on('close', () => this.fail(new ApiClosed('the Runtime API closed the connection')));
  }

  /** Send `text`, one or more requests; `handlers[i](error, answer)` gets the i-th answer {status, headers, body}. */
  send(text, ...handlers) {
    if (this.closed) {
      const error = this.closed;
      queueMicrotask(() => handlers.forEach((handler) => handler(error, null)));
      return;
    }
    this.waiters.push(...handlers);
    this.socket.ref();   // an answer is due: keep the process alive for it
    this.socket.write(text);
  }

  received(chunk) {
    // Chunks wait in a list until an answer can be whole: a big event is joined once, not per chunk.
    this.chunks.push(chunk);
    this.size += chunk.length;
    if (this.size < this.need) return;
    let buffer = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.size);
    this.chunks = [];
    this.size = 0;
    this.need = 0;
    const answered = [];
    while (buffer !== null && this.waiters.length > answered.length) {
      let answer;
      let used;
      if (buffer.length >= ACCEPTED.length && buffer.compare(ACCEPTED, 0, ACCEPTED.length, 0, ACCEPTED.length) === 0) {
        answer = { status: 202, headers: {}, body: null };
        used = ACCEPTED.length;
      } else {
        const end = buffer.indexOf(HEAD_END);
        if (end < 0) {
          if (buffer.length > MAX_HEAD) return this.fail(new Error('the Runtime API sent an oversized head'));
          break;
        }
        const lines = buffer.latin1Slice(0, end).split('\r\n');
        const status = Number(lines[0].slice(9, 12));
        if (!lines[0].startsWith('HTTP/1.') || !(status >= 100)) {
          return this.fail(new Error(`not an HTTP response: ${JSON.stringify(lines[0].slice(0, 80))}`));
        }
        const headers = {};
        for (let i = 1; i < lines.length; i++) {
          const colon = lines[i].indexOf(':');
          if (colon > 0) headers[lines[i].slice(0, colon).trim().toLowerCase()] = lines[i].slice(colon + 1).trim();
        }
        if (headers['transfer-encoding']) return this.fail(new Error('chunked answers are not supported'));
        used = end + 4 + Number(headers['content-length'] ?? 0);
        if (buffer.length < used) {
          this.need = used;
          break;
        }
        answer = { status, headers, body: buffer.subarray(end + 4, used) };
      }
      buffer = used === buffer.length ? null : buffer.subarray(used);
      answered.push(answer);
    }
    if (buffer !== null) {
      this.chunks.push(buffer);
      this.size = buffer.length;
    }
    // Handlers run once the parsing is done: what they send (the next request) starts a new round.
    const handlers = this.waiters.splice(0, answered.length);
    if (!this.waiters.length) this.socket.unref();   // nothing due: user code alone decides when the loop empties
    for (let i = 0; i < handlers.length; i++) handlers[i](null, answered[i]);
  }

  fail(error) {
    if (this.closed) return;
    this.closed = error;
    this.socket.destroy();
    for (const handler of this.waiters.splice(0)) handler(error, null);
  }
}

function post(path, body, errorType) {
  const type = errorType ? `Lambda-Runtime-Function-Error-Type: ${headerSafe(errorType)}\r\n` : '';
  return `POST ${path} HTTP/1.1\r\nHost: runtime\r\nContent-Type: application/json\r\n`
    + `Content-Length: ${Buffer.byteLength(body)}\r\n${type}\r\n${body}`;
}

function headerSafe(value) {
  return String(value).replace(/[^\x20-\x7e]/g, '?');
}

function invocationPath(id, kind) {
  // RFC 3986 path characters go as they are (kfn's host compares the id verbatim); others encoded.
  const segment = /^[A-Za-z0-9._~:@!$&'()*+,;=-]+$/.test(id) ? id : encodeURIComponent(id);
  return `${PREFIX}/invocation/${segment}/${kind}`;
}

// -- loading the handler, as AWS's runtime does ----------------------------------------------------

function packageTypeIsModule(directory) {
  for (let dir = directory; ; dir = path.dirname(dir)) {
    if (dir.endsWith('/node_modules')) return false;
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      try {
        return JSON.parse(fs.readFileSync(file, 'utf8'))?.type === 'module';
      } catch (e) {
        console.warn(`${file} cannot be read, it will be ignored for ES module detection purposes.`, e);
        return false;
      }
    }
    if (dir === path.dirname(dir)) return false;
  }
}

async function importFile(file) {
  return import(pathToFileURL(file).href);
}

async function loadModule(appRoot, moduleRoot, name, tried) {
  const base = path.resolve(appRoot, moduleRoot, name);
  tried.file = base;
  if (fs.existsSync(base) && fs.statSync(base).isFile()) return localRequire(base);
  const js = `${base}.js`;
  if (fs.existsSync(js)) {
    tried.file = js;
    return packageTypeIsModule(path.dirname(js)) ? importFile(js) : localRequire(js);
  }
  tried.file = `${base}.mjs`;
  if (fs.existsSync(tried.file)) return importFile(tried.file);
  tried.file = `${base}.cjs`;
  if (fs.existsSync(tried.file)) return localRequire(tried.file);
  tried.file = null;
  // A directory with an index.js or a package.json, or a package on NODE_PATH: Node's own lookup.
  return localRequire(localRequire.resolve(name, { paths: [appRoot, path.resolve(appRoot, moduleRoot)] }));
}

/** Where a syntax error is: file, line, the line and a caret, as Node prints it (or nothing). */
function syntaxErrorLocation(error, file, appRoot) {
  const stack = typeof error.stack === 'string' ? error.stack : '';
  if (stack && !stack.startsWith('SyntaxError')) {   // CommonJS errors start with it
    return stack.slice(0, stack.indexOf('\n\n') >>> 0).split('\n');
  }
  // ES modules' errors do not say where: `node --check` the handler's file, then the others.
  const files = file ? [file] : [];
  const walk = (dir, depth) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (files.length > 50 || entry.name.startsWith('.') || entry.name === 'node_modules') continue;
      const full = path.join(dir, entry.name);
      if (entry.isDirectory() && depth < 4) walk(full, depth + 1);
      else if (/\.[cm]?js$/.test(entry.name) && full !== file) files.push(full);
    }
  };
  try {
    walk(appRoot, 0);
  } catch { /* a partial list will do */ }
  for (const candidate of files) {
    const check = spawnSync(process.execPath, ['--check', candidate], { encoding: 'utf8', timeout: 5000 });
    if (check.status !== 0 && check.stderr) {
      return check.stderr.slice(0, check.stderr.indexOf('\n\n') >>> 0).split('\n');
    }
  }
  return [];
}

async function loadHandler(appRoot, fullHandler) {
  if (fullHandler.includes('..')) {
    throw new MalformedHandlerName(`'${fullHandler}' is not a valid handler name. Use absolute paths when `
      + 'specifying root directories in handler names.');
  }
  const base = path.basename(fullHandler);
  const moduleRoot = fullHandler.substring(0, fullHandler.indexOf(base));
  const match = /^([^.]*)\.(.*)$/.exec(base);
  if (!match) throw new MalformedHandlerName('Bad handler');
  const [, name, handlerPath] = match;
  let app;
  const tried = { file: null };
  try {
    app = await loadModule(appRoot, moduleRoot, name, tried);
  } catch (e) {
    if (e instanceof SyntaxError) {
      const wrapped = new UserCodeSyntaxError(e);
      const [first, ...frames] = wrapped.stack.split('\n');
      wrapped[TRACE] = [first, ...syntaxErrorLocation(e, tried.file, appRoot), ...frames].join('\n');
      throw wrapped;
    }
    if (e?.code === 'MODULE_NOT_FOUND' || e?.code === 'ERR_MODULE_NOT_FOUND') throw new ImportModuleError(e);
    throw e;
  }
  const handler = handlerPath.split('.').reduce((object, key) => object && object[key], app);
  if (!handler) throw new HandlerNotFound(`${fullHandler} is undefined or not exported`);
  if (typeof handler !== 'function') throw new HandlerNotFound(`${fullHandler} is not a function`);
  if (handler[STREAMING] !== undefined && handler[STREAMING] !== 'response') {
    throw new MalformedStreamingHandler('Only response streaming is supported.');
  }
  return handler[STREAMING] ? bufferedStreaming(handler) : handler;
}

/** ES modules ignore NODE_PATH: look there too when a bare import is not found the usual way. */
function resolveImportsFromNodePath() {
  // Only where packages are (a function's requirements): on Node.js 20 the hooks cost a thread.
  const installed = (d) => {
    try {
      return fs.readdirSync(d).some((name) => !name.startsWith('.'));
    } catch {
      return false;
    }
  };
  const dirs = (process.env.NODE_PATH ?? '').split(path.delimiter).filter((d) => d && installed(d));
  if (!dirs.length) return;
  // A parent inside each node_modules directory: resolution walks up from there and finds its packages.
  const parents = dirs.map((d) => pathToFileURL(path.join(path.resolve(d), '.kfn-resolve.mjs')).href);
  const bare = (s) => !/^(\.{0,2}\/|[a-zA-Z][a-zA-Z0-9+.-]*:|#)/.test(s);
  if (typeof Module.registerHooks === 'function') {   // Node.js >= 22.15: synchronous, in this thread
    Module.registerHooks({
      resolve(specifier, context, next) {
        try {
          return next(specifier, context);
        } catch (e) {
          if (e?.code !== 'ERR_MODULE_NOT_FOUND' || !bare(specifier)) throw e;
          for (const parentURL of parents) {
            try { return next(specifier, { ...context, parentURL }); } catch { /* the next directory */ }
          }
          throw e;
        }
      },
    });
    return;
  }
  const hooks = `let parents = [];
export function initialize(data) { parents = data.parents; }
const bare = ${bare.toString()};
export async function resolve(specifier, context, next) {
  try { return await next(specifier, context); } catch (e) {
    if (e?.code !== 'ERR_MODULE_NOT_FOUND' || !bare(specifier)) throw e;
    for (const parentURL of parents) {
      try { return await next(specifier, { ...context, parentURL }); } catch { /* the next directory */ }
    }
    throw e;
  }
}`;
  Module.register(`data:text/javascript,${encodeURIComponent(hooks)}`, { data: { parents } });
}

// -- response streaming, buffered ------------------------------------------------------------------
// awslambda.streamifyResponse handlers run unchanged, but their stream is collected and answered
// whole when it ends: an HTTP response for the gateway, with the status, headers and cookies of
// HttpResponseStream.from's prelude (or the stream's content type), the body in base64.

const PRELUDE = Symbol('kfn.prelude');
const HTTP_INTEGRATION = 'application/vnd.awslambda.http-integration-response';

if (!['1', 'true'].includes(process.env.AWS_LAMBDA_NODEJS_NO_GLOBAL_AWSLAMBDA)) {
  globalThis.awslambda ??= {
    streamifyResponse(handler) {
      handler[STREAMING] = 'response';
      return handler;
    },
    HttpResponseStream: class HttpResponseStream {
      static from(stream, prelude) {
        stream.setContentType(HTTP_INTEGRATION);
        stream[PRELUDE] = prelude;
        return stream;
      }
    },
  };
}

async function bufferedStreaming(handler) {
  const { Writable } = await import('node:stream');
  const streaming = async (event, context) => {
    const chunks = [];
    let contentType = 'application/octet-stream';
    const stream = new Writable({
      write(chunk, encoding, done) {
        chunks.push(typeof chunk === 'string' ? Buffer.from(chunk, encoding) : Buffer.from(chunk));
        done();
      },
    });
    stream.setContentType = (type) => { contentType = String(type); };
    const finished = new Promise((resolve, reject) => {
      stream.on('finish', resolve);
      stream.on('error', reject);
    });
    const returned = handler(event, stream, context);
    if (!returned || typeof returned.then !== 'function') {
      throw new MalformedStreamingHandler('Streaming does not support non-async handlers.');
    }
    if (await returned !== undefined) console.warn('Streaming handlers ignore return values.');
    if (!stream.writableEnded) throw new Error('Response stream is not finished.');
    await finished;
    const body = Buffer.concat(chunks).toString('base64');
    if (contentType !== HTTP_INTEGRATION) {
      return { statusCode: 200, headers: { 'content-type': contentType }, body, isBase64Encoded: true };
    }
    const prelude = stream[PRELUDE] ?? {};
    return { statusCode: prelude.statusCode ?? 200, headers: prelude.headers ?? {}, cookies: prelude.cookies, body,
             isBase64Encoded: true };
  };
  return streaming;
}

// -- invocations ------------------------------------------------------------------------------------

let client = null;
let handlerFunction = null;
let handlerIsAsync = false;
let lastTrace = process.env._X_AMZN_TRACE_ID;
let current = null;         // the invocation in progress: {id, answered}
let onEmptyLoop = null;     // what runs when the event loop empties ('beforeExit')
let dying = false;
let logError = null;

function exit(code) {
  process.exit(code);   // stdout and stderr are pipes: their writes were synchronous
}

function apiFailed(error) {
  if (dying) return;
  dying = true;
  if (error instanceof ApiClosed) exit(0);   // the host is done with this environment
  process.stderr.write(`kfn-ric: the Runtime API failed: ${error?.message ?? error}\n`);
  exit(1);
}

/** Post an invocation's answer and ask for the next one, in one write. */
function answer(invocation, body, errorType) {
  if (invocation.answered || dying) return;
  invocation.answered = true;
  onEmptyLoop = null;
  client.send(post(invocationPath(invocation.id, errorType ? 'error' : 'response'), body, errorType) + NEXT,
    (error, reply) => {
      if (reply !== null && reply.status >= 300) {   // e.g. 413 for an oversized result: the host failed it
        process.stderr.write(`kfn-ric: the Runtime API answered ${reply.status} to the result of ${invocation.id}: `
          + `${reply.body?.toString('utf8', 0, 200)}\n`);
      }
    },
    nextInvocation);
}

/** The answer to GET next: the invocation to run, or the end of this environment. */
function nextInvocation(error, next) {
  if (error !== null) apiFailed(error);
  else invoke(next);
}

function answerResult(invocation, result) {
  let body;
  try {
    body = JSON.stringify(result === undefined ? null : result);
  } catch {
    answerError(invocation, new Error('Unable to stringify response body'));
    return;
  }
  answer(invocation, body ?? 'null', null);
}

function answerError(invocation, error) {
  if (invocation.answered || dying) return;
  logError('Invoke Error', error);
  const object = errorObject(error);
  answer(invocation, JSON.stringify(object), object.errorType || 'Unknown');
}

function parseHeaderJson(value, name) {
  if (value === undefined) return undefined;
  try {
    return JSON.parse(value);
  } catch (e) {
    throw new Error(`Cannot parse ${name} as json: ${e}`);
  }
}

const env = process.env;
const staticContext = {
  functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
  functionName: env.AWS_LAMBDA_FUNCTION_NAME,
  memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
  logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
  logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
};

function invoke(next) {
  if (next.status !== 200) {
    apiFailed(new Error(`GET next answered ${next.status}: ${next.body?.toString('utf8', 0, 200)}`));
    return;
  }
  const headers = next.headers;
  const id = headers['lambda-runtime-aws-request-id'] ?? '';
  const invocation = { id, answered: false };
  current = invocation;
  globalThis[REQUEST_ID] = id;
  const trace = headers['lambda-runtime-trace-id'];
  if (trace !== lastTrace) {   // process.env is a call into C++ each time: touched only on a change
    if (trace) env._X_AMZN_TRACE_ID = trace;
    else delete env._X_AMZN_TRACE_ID;
    lastTrace = trace;
  }

  // Lambda's callback, and the legacy done/succeed/fail: the first of them to be called counts.
  let finished = false;
  let waitForEmptyLoop = true;
  const once = (fn) => (...args) => {
    if (finished) return;
    finished = true;
    fn(...args);
  };
  const done = (error, result) => {
    onEmptyLoop = null;
    if (error !== undefined && error !== null) answerError(invocation, error);
    else answerResult(invocation, result);
  };
  const callback = once((error, result) => {
    if ((error !== undefined && error !== null) || !waitForEmptyLoop) {
      done(error, result);
    } else {
      onEmptyLoop = () => setImmediate(() => answerResult(invocation, result));
    }
  });
  const succeed = once((result) => done(null, result));
  const fail = once((error) => done(error === undefined || error === null ? 'handled' : error, null));
  let event;
  let context;
  try {
    event = next.body.length ? JSON.parse(next.body.toString('utf8')) : {};
    const deadline = Number(headers['lambda-runtime-deadline-ms']);
    context = {
      get callbackWaitsForEmptyEventLoop() { return waitForEmptyLoop; },
      set callbackWaitsForEmptyEventLoop(value) { waitForEmptyLoop = value; },
      succeed,
      fail,
      done: once(done),
      ...staticContext,
      clientContext: parseHeaderJson(headers['lambda-runtime-client-context'], 'ClientContext'),
      identity: parseHeaderJson(headers['lambda-runtime-cognito-identity'], 'CognitoIdentity'),
      invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
      awsRequestId: id,
      tenantId: headers['lambda-runtime-aws-tenant-id'],
      getRemainingTimeInMillis: () => deadline - Date.now(),
    };
  } catch (e) {
    const error = new UnmarshalError(e?.message ?? String(e));
    answerError(invocation, error);
    return;
  }
  // Neither a settled promise nor a callback by the time nothing is left to run: AWS answers null for
  // a plain function (a sync handler's return value is ignored), a NodeJsExit error for an async one.
  onEmptyLoop = () => {
    finished = true;
    if (handlerIsAsync) answerError(invocation, new NodeJsExit());
    else answerResult(invocation, null);
  };
  try {
    const result = handlerFunction(event, context, callback);
    if (result && typeof result.then === 'function') {
      result.then(succeed, fail).catch(fail);
    }
  } catch (e) {
    callback(e);
  }
}

/** An uncaught exception or unhandled rejection: fail what is in progress, then end the process. */
function fatal(error, code) {
  if (dying) return;
  dying = true;
  const invocation = current;
  let path = null;
  if (client === null || client.closed) {
    // Nothing to tell the host through.
  } else if (invocation === null) {
    path = `${PREFIX}/init/error`;
  } else if (!invocation.answered) {
    invocation.answered = true;
    path = invocationPath(invocation.id, 'error');
  }
  if (path === null) exit(code);
  const object = errorObject(error);
  setTimeout(() => exit(code), FATAL_POST_TIMEOUT_MS);
  client.send(post(path, JSON.stringify(object), object.errorType || 'Unknown'), () => exit(code));
}

async function main() {
  logError = patchConsole();
  process.on('uncaughtException', (error) => {
    logError('Uncaught Exception', error);
    fatal(error, EXIT_UNCAUGHT);
  });
  process.on('unhandledRejection', (reason, promise) => {
    const error = new UnhandledPromiseRejection(reason, promise);
    logError('Unhandled Promise Rejection', error);
    fatal(error, EXIT_UNHANDLED_REJECTION);
  });
  process.on('beforeExit', () => {
    const run = onEmptyLoop;
    onEmptyLoop = null;
    if (run !== null) run();
  });
  // Connect while the function loads; nothing is sent until it has.
  client = new RuntimeClient(env.AWS_LAMBDA_RUNTIME_API ?? '');
  const appRoot = env.LAMBDA_TASK_ROOT || process.cwd();
  resolveImportsFromNodePath();
  const handler = await loadHandler(appRoot, env._HANDLER ?? '');   // an error here is an init error
  handlerFunction = handler;
  handlerIsAsync = handler.constructor?.name === 'AsyncFunction';
  client.send(NEXT, nextInvocation);
}

main().catch((error) => {
  logError('Uncaught Exception', error);
  fatal(error, EXIT_UNCAUGHT);
});
