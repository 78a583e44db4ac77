'use strict';
/*
 * Node runtime for JavaScript sequences (see runner/PROTOCOL.md and docs/javascript.md).
 *
 * Started as `node runner/node_runtime.js` with the launch spec in env HUB_LAUNCH and the
 * descriptors 0..6 already in place. Plain CommonJS with Node built-ins only: it runs from the
 * hub's source tree, never from a package, so it cannot depend on anything installed.
 */

const fs = require('fs');
const net = require('net');
const path = require('path');
const util = require('util');
const { EventEmitter } = require('events');
const { Readable, Writable } = require('stream');
const { StringDecoder } = require('string_decoder');
const { pathToFileURL } = require('url');

// The names of core/protocol.py (Fd, Exit, Message), in camelCase: tests/runner/test_protocol.py
// checks that every entry here has the value the hub gives it.
const FD = { stdout: 1, stderr: 2, control: 3, output: 4, input: 5, log: 6 };

const EXIT = {
    completed: 0,
    launchFailed: 20,
    badMain: 21,
    failedOnStart: 22,
    failedWhileRunning: 23,
    killed: 137,
    stopped: 138,
};

const MSG = {
    ping: 3000,
    health: 3001,
    stopped: 3006,
    alive: 3010,
    completed: 3011,
    pang: 3012,
    event: 5001,
    stop: 4001,
    kill: 4002,
    healthCheck: 4004,
    declared: 4005,
};

// Output is coalesced into chunks of this size: one write per item would cap throughput at a
// few tens of thousands of items per second (one syscall each).
const FLUSH_BYTES = 64 * 1024;
// A header longer than this is not a header: give up rather than buffer the whole input.
const MAX_HEADER_BYTES = 16 * 1024;
// Upper bound for flushing streams at exit, so a supervisor that stopped reading cannot keep a
// finished child alive forever.
const EXIT_FLUSH_TIMEOUT_MS = 5000;
// How long output waits for the supervisor to answer a topic declaration (PANG).
const DECLARE_TIMEOUT_MS = 10000;

const NDJSON_TYPES = new Set(['application/x-ndjson', 'text/x-ndjson', 'application/json']);

// ------------------------------------------------------------------------------------------
// Descriptors

/** A writable that drops everything, for a descriptor the supervisor did not give us. */
function nullWritable() {
    return new Writable({ write: (_chunk, _enc, cb) => cb() });
}

function fdKind(fd) {
    try {
        const st = fs.fstatSync(fd);
        return st.isFIFO() || st.isSocket() ? 'stream' : 'file';
    } catch {
        return null; // closed: EBADF
    }
}

/** Opens fd for writing: a libuv stream for pipes and sockets (async, with backpressure). */
function openWritable(fd) {
    const kind = fdKind(fd);
    let stream;
    if (kind === 'stream') stream = new net.Socket({ fd, readable: false, writable: true });
    else if (kind === 'file') stream = fs.createWriteStream(null, { fd, autoClose: false });
    else stream = nullWritable();
    // A reader that went away (EPIPE) must not crash the sequence with an unhandled 'error'.
    stream.on('error', () => {});
    return stream;
}

/** Opens fd for reading; null when the descriptor is closed. */
function openReadable(fd) {
    const kind = fdKind(fd);
    if (kind === null) return null;
    const stream = kind === 'stream'
        ? new net.Socket({ fd, readable: true, writable: false })
        : fs.createReadStream(null, { fd, autoClose: false });
    return stream;
}

/** Resolves once everything written so far to `stream` has left the process. */
function flushWritable(stream) {
    if (!stream || stream.destroyed || stream.writableEnded) return Promise.resolve();
    return new Promise((resolve) => {
        stream.once('error', resolve);
        stream.once('close', resolve);
        // Writes complete in order, so the callback of an empty write means all before it are out.
        stream.write('', () => resolve());
    });
}

/** Ends `stream` (the reader sees EOF) once everything written to it has left the process. */
function endWritable(stream) {
    if (!stream || stream.destroyed || stream.writableFinished) return Promise.resolve();
    return new Promise((resolve) => {
        stream.once('error', resolve);
        stream.once('close', resolve);
        stream.end(() => resolve());
    });
}

/** Resolves when `stream` can take more data, or will never take any again. */
function waitDrain(stream) {
    return new Promise((resolve) => {
        const done = () => {
            stream.off('drain', done);
            stream.off('error', done);
            stream.off('close', done);
            resolve();
        };
        stream.on('drain', done);
        stream.on('error', done);
        stream.on('close', done);
    });
}

const nextMacrotask = () => new Promise((resolve) => setImmediate(resolve));
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------------------------------
// Control channel (fd 3): newline-delimited JSON arrays [code, data]

class Control extends EventEmitter {
    constructor(fd) {
        super();
        const kind = fdKind(fd);
        // allowHalfOpen: keep our write side usable even if the supervisor shut down its own.
        this.socket = kind === 'stream'
            ? new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true })
            : null;
        this.buffered = '';
        if (!this.socket) return;
        this.socket.setEncoding('utf8');
        this.socket.on('data', (text) => this.onData(text));
        this.socket.on('end', () => this.emit('closed'));
        this.socket.on('error', () => {});
    }

    onData(text) {
        this.buffered += text;
        let newline;
        while ((newline = this.buffered.indexOf('\n')) >= 0) {
            const line = this.buffered.slice(0, newline).trim();
            this.buffered = this.buffered.slice(newline + 1);
            if (line) this.onLine(line);
        }
    }

    onLine(line) {
        let message;
        try {
            message = JSON.parse(line);
        } catch {
            this.emit('invalid', line);
            return;
        }
        if (!Array.isArray(message)) {
            this.emit('invalid', line);
            return;
        }
        const [code, data] = message;
        this.emit('message', code, data ?? {});
    }

    send(code, data = {}) {
        if (!this.socket || this.socket.destroyed) return;
        this.socket.write(JSON.stringify([code, data]) + '\n');
    }

    flush() {
        return flushWritable(this.socket);
    }
}

// ------------------------------------------------------------------------------------------
// Log stream (fd 6): one JSON object per line

/** JSON that never throws: errors keep their stack, bigints become strings, cycles are cut. */
function safeJson(value) {
    const replacer = (_key, v) => {
        if (v instanceof Error) return { name: v.name, message: v.message, stack: v.stack };
        if (typeof v === 'bigint') return v.toString();
        return v;
    };
    try {
        return JSON.stringify(value, replacer);
    } catch {
        return JSON.stringify(util.inspect(value, { depth: 4 }));
    }
}

class Logger {
    constructor(stream) {
        this.stream = stream;
        for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal']) {
            this[level] = (msg, ...data) => this.write(level.toUpperCase(), msg, data);
        }
        this.log = this.info;
    }

    write(level, msg, data) {
        const entry = { ts: Date.now(), level, msg: typeof msg === 'string' ? msg : '' };
        // A non-string first argument is data, not a message: keep it structured.
        if (typeof msg !== 'string' && msg !== undefined) data = [msg, ...data];
        if (data.length === 1) entry.data = data[0];
        else if (data.length > 1) entry.data = data;
        this.stream.write(safeJson(entry) + '\n');
    }
}

// ------------------------------------------------------------------------------------------
// Output stream (fd 4)

/**
 * Encodes items and writes them in large chunks.
 *
 * Items pile up until FLUSH_BYTES, or until the producer stops producing synchronously (a
 * setImmediate fires only when the event loop gets a turn), so a slow producer's items still
 * show up one by one at once.
 */
class OutputWriter {
    constructor(stream) {
        this.stream = stream;
        this.parts = [];
        this.size = 0;
        this.hasBuffers = false;
        this.flushScheduled = false;
        // ndjson mode: every item, strings included, becomes one JSON line (STH does the same
        // for a returned stream whose contentType is ndjson).
        this.jsonItems = false;
    }

    encode(item) {
        if (item === undefined || item === null) return null;
        if (Buffer.isBuffer(item)) return item;
        if (item instanceof Uint8Array) {
            return Buffer.from(item.buffer, item.byteOffset, item.length);
        }
        if (typeof item === 'string' && !this.jsonItems) return item;
        // Fast path for the common case (numbers): same text as JSON.stringify, far cheaper.
        if (typeof item === 'number' && Number.isFinite(item)) return item + '\n';
        let json;
        try {
            json = item instanceof Error ? safeJson(item) : JSON.stringify(item);
        } catch {
            json = safeJson(item); // bigints, cycles
        }
        return json === undefined ? null : json + '\n';
    }

    /** Queues one item; true when enough is queued that the caller should await flushFull(). */
    push(item) {
        const data = this.encode(item);
        if (data === null || data.length === 0) return false;
        this.parts.push(data);
        this.size += data.length;
        if (typeof data !== 'string') this.hasBuffers = true;
        if (this.size >= FLUSH_BYTES) return true;
        this.scheduleFlush();
        return false;
    }

    scheduleFlush() {
        if (this.flushScheduled) return;
        this.flushScheduled = true;
        setImmediate(() => {
            this.flushScheduled = false;
            this.flush();
        });
    }

    /** Writes what is queued; false when the stream asks us to wait for 'drain'. */
    flush() {
        if (this.size === 0) return true;
        const chunk = this.hasBuffers
            ? Buffer.concat(this.parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)))
            : this.parts.join('');
        this.parts = [];
        this.size = 0;
        this.hasBuffers = false;
        return this.stream.write(chunk);
    }

    /** Writes a full chunk, waits for the reader if it is behind, and lets control messages in. */
    async flushFull() {
        if (!this.flush()) await waitDrain(this.stream);
        // A producer that never awaits anything real would otherwise starve the event loop:
        // no stop, kill or health message would be read until it finished.
        await nextMacrotask();
    }

    async end() {
        this.flush();
        await endWritable(this.stream);
    }
}

// ------------------------------------------------------------------------------------------
// Input stream (fd 5): "Content-Type: <type>\r\n\r\n" then raw bodies

function parseContentType(headerText) {
    for (const line of headerText.split('\r\n')) {
        const colon = line.indexOf(':');
        if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === 'content-type') {
            return normaliseContentType(line.slice(colon + 1));
        }
    }
    return 'text/plain';
}

function normaliseContentType(value) {
    return String(value || '').split(';')[0].trim().toLowerCase() || 'text/plain';
}

/** Splits text into lines, newline kept; the tail without newline waits for more text. */
class LineSplitter {
    constructor() {
        this.decoder = new StringDecoder('utf8');
        this.carry = '';
    }

    write(chunk) {
        const text = this.carry + this.decoder.write(chunk);
        const lines = [];
        let start = 0;
        let newline;
        while ((newline = text.indexOf('\n', start)) >= 0) {
            lines.push(text.slice(start, newline + 1));
            start = newline + 1;
        }
        this.carry = text.slice(start);
        return lines;
    }

    end() {
        const rest = this.carry + this.decoder.end();
        this.carry = '';
        return rest ? [rest] : [];
    }
}

/** A decoder turns raw body chunks into the items the sequence reads, by content type. */
function makeDecoder(contentType, logger) {
    if (contentType === 'application/octet-stream') {
        return { write: (chunk) => [chunk], end: () => [] };
    }
    if (NDJSON_TYPES.has(contentType)) {
        const lines = new LineSplitter();
        const parse = (list) => list.filter((l) => l.trim() !== '').flatMap((l) => {
            try {
                return [JSON.parse(l)];
            } catch (err) {
                // One bad line from one client should not take the instance down; say so where
                // the author looks (stderr, as the Python runtime does) and in the log.
                const shown = JSON.stringify(l.slice(0, 200));
                process.stderr.write(
                    `runtime: skipped an input line that is not JSON (${err.message}): ${shown}\n`);
                logger.error('Input line is not JSON, skipped', { line: l, error: err.message });
                return [];
            }
        });
        return { write: (chunk) => parse(lines.write(chunk)), end: () => parse(lines.end()) };
    }
    if (contentType === 'text/plain') {
        const lines = new LineSplitter();
        return { write: (chunk) => lines.write(chunk), end: () => lines.end() };
    }
    // Same rule as the Python runtime, so a package behaves alike in both languages.
    logger.warn(`Unknown input content type ${contentType}: reading it as raw bytes`);
    return { write: (chunk) => [chunk], end: () => [] };
}

/**
 * The sequence's `input`: an object-mode Readable over fd 5.
 *
 * The descriptor is opened on the first read, and paused whenever the sequence is behind, so a
 * sequence that never reads input never buffers it (the supervisor sees the pipe full).
 */
function createInputStream(openSource, forcedContentType, logger) {
    let source = null;
    let header = Buffer.alloc(0);
    let decoder = null;
    let ended = false;

    const input = new Readable({
        objectMode: true,
        read() {
            if (source) source.resume();
            else start();
        },
    });

    function deliver(items) {
        let more = true;
        for (const item of items) more = input.push(item);
        return more;
    }

    function useContentType(contentType) {
        input.contentType = forcedContentType || contentType;
        decoder = makeDecoder(input.contentType, logger);
    }

    function finish() {
        if (ended) return;
        ended = true;
        // Bytes without a complete header still are input: read them as text.
        if (!decoder && header.length) deliver([header.toString('utf8')]);
        if (decoder) deliver(decoder.end());
        input.push(null);
    }

    function onHeaderBytes(chunk) {
        header = Buffer.concat([header, chunk]);
        const end = header.indexOf('\r\n\r\n');
        if (end < 0 && header.length <= MAX_HEADER_BYTES) return true;
        let body;
        let contentType;
        if (end < 0) {
            logger.error('Input has no Content-Type header: reading it as text/plain');
            body = header;
            contentType = 'text/plain';
        } else {
            body = header.subarray(end + 4);
            contentType = parseContentType(header.subarray(0, end).toString('latin1'));
        }
        header = null;
        useContentType(contentType);
        return body.length ? deliver(decoder.write(body)) : true;
    }

    function start() {
        source = openSource();
        if (!source) {
            finish();
            return;
        }
        source.on('data', (chunk) => {
            const more = decoder ? deliver(decoder.write(chunk)) : onHeaderBytes(chunk);
            if (!more) source.pause();
        });
        source.on('end', finish);
        source.on('error', (err) => {
            logger.error('Input stream failed', err);
            finish();
        });
    }

    return input;
}

// ------------------------------------------------------------------------------------------
// The context: `this` inside the sequence

class Context {
    constructor({ spec, logger, control, finish }) {
        this.instanceId = spec.instance_id;
        this.config = spec.app_config || {};
        this.logger = logger;
        // STH waits 10 s after completion by default; the hub does not, but honours a value the
        // sequence sets (in milliseconds) for sequences that finish work after returning.
        this.exitTimeout = 0;
        this.initialState = undefined;
        this._keepAliveRequested = false;
        this._control = control;
        this._finish = finish;
        this._events = new EventEmitter();
        this._stopHandlers = [];
        this._killHandlers = [];
        this._monitoringHandlers = [];
    }

    emit(eventName, message) {
        this._control.send(MSG.event, { eventName, message });
        return this;
    }

    on(eventName, handler) {
        this._events.on(eventName, assertFunction(handler));
        return this;
    }

    once(eventName, handler) {
        this._events.once(eventName, assertFunction(handler));
        return this;
    }

    off(eventName, handler) {
        this._events.off(eventName, handler);
        return this;
    }

    addStopHandler(handler) {
        this._stopHandlers.push(assertFunction(handler));
        return this;
    }

    addKillHandler(handler) {
        this._killHandlers.push(assertFunction(handler));
        return this;
    }

    addMonitoringHandler(handler) {
        this._monitoringHandlers.push(assertFunction(handler));
        return this;
    }

    keepAlive(milliseconds) {
        this._keepAliveRequested = true;
        this._control.send(MSG.alive, { keepAlive: milliseconds || 0 });
        return this;
    }

    /** Ends the instance as completed: what was output so far is flushed, then exit 0. */
    end() {
        this._finish(null);
        return this;
    }

    /** Ends the instance as failed (exit 23), with `error` on stderr. */
    destroy(error) {
        this._finish(error || new Error('Sequence destroyed'));
        return this;
    }

    describe() {
        return this;
    }

    /** Delivers an event from the supervisor to the sequence's `on` callbacks. */
    deliverEvent(eventName, message) {
        // EventEmitter throws on an 'error' event nobody listens to; from outside that is noise.
        if (eventName === 'error' && this._events.listenerCount('error') === 0) return;
        this._events.emit(eventName, message);
    }

    async runStopHandlers(timeout, canCallKeepalive) {
        for (const handler of this._stopHandlers) {
            try {
                await handler.call(this, timeout, canCallKeepalive);
            } catch (err) {
                this.logger.error('Stop handler failed', err);
            }
        }
    }

    runKillHandlers() {
        for (const handler of this._killHandlers) {
            try {
                handler.call(this);
            } catch (err) {
                this.logger.error('Kill handler failed', err);
            }
        }
    }

    async health() {
        let healthy = true;
        for (const handler of this._monitoringHandlers) {
            try {
                const reply = await handler.call(this, { healthy });
                healthy = healthy && (reply?.healthy ?? true) !== false;
            } catch (err) {
                this.logger.error('Health check failed', err);
                healthy = false;
            }
        }
        return { healthy };
    }
}

function assertFunction(handler) {
    if (typeof handler !== 'function') throw new TypeError('Handler must be a function');
    return handler;
}

// ------------------------------------------------------------------------------------------
// Loading the sequence

class ExitError extends Error {
    constructor(code, message) {
        super(message);
        this.exitCode = code;
    }
}

function readSpec() {
    const raw = process.env.HUB_LAUNCH;
    // The spec is ours, not the sequence's: keep it out of the env its own children inherit.
    delete process.env.HUB_LAUNCH;
    if (!raw) throw new ExitError(EXIT.launchFailed, 'HUB_LAUNCH is not set');
    let spec;
    try {
        spec = JSON.parse(raw);
    } catch (err) {
        throw new ExitError(EXIT.launchFailed, `HUB_LAUNCH is not JSON: ${err.message}`);
    }
    if (!spec || typeof spec !== 'object' || typeof spec.package_dir !== 'string') {
        throw new ExitError(EXIT.launchFailed, 'HUB_LAUNCH has no package_dir');
    }
    if (spec.mode && spec.mode !== 'sequence') {
        const why = `The Node runtime runs sequences only, not ${spec.mode}`;
        throw new ExitError(EXIT.launchFailed, why);
    }
    return spec;
}

/** package.json as the supervisor passed it, else as found in the package; {} if neither. */
function readPackageJson(spec) {
    if (spec.package && typeof spec.package === 'object') return spec.package;
    try {
        return JSON.parse(fs.readFileSync(path.join(spec.package_dir, 'package.json'), 'utf8'));
    } catch {
        return {};
    }
}

/** Absolute path of the main module, which must exist inside the package (else exit 21). */
function resolveMain(spec, pkg) {
    const packageDir = path.resolve(spec.package_dir);
    const main = spec.main || pkg.main || 'index.js';
    const candidate = path.resolve(packageDir, main);
    if (candidate !== packageDir && !candidate.startsWith(packageDir + path.sep)) {
        throw new ExitError(EXIT.badMain, `main ${main} is outside the package`);
    }
    try {
        // require.resolve adds what `require` would: a missing ".js", a folder's index.js.
        return require.resolve(candidate);
    } catch {
        throw new ExitError(EXIT.badMain, `main ${main} not found in ${packageDir}`);
    }
}

/**
 * Loads the main module. Requiring it by absolute path makes its own node_modules (and those of
 * the folders above) resolvable, as for any Node program. ES modules are imported instead.
 */
async function loadModule(mainPath) {
    try {
        return require(mainPath);
    } catch (err) {
        if (err.code !== 'ERR_REQUIRE_ESM') throw err;
        const namespace = await import(pathToFileURL(mainPath).href);
        return namespace.default ?? namespace;
    }
}

/**
 * Normalises module.exports to a pipeline: { functions, contentType }.
 * Throws ExitError 21 for shapes that cannot run.
 */
function toPipeline(exported) {
    let value = exported;
    // Transpiled ES modules put the export under `default`, as STH accepts.
    if (value && typeof value === 'object' && !Array.isArray(value) && 'default' in value) {
        value = value.default;
    }
    const items = Array.isArray(value) ? [...value] : [value];
    let contentType = null;
    let requires = null;
    if (items.length && items[0] && typeof items[0] === 'object') {
        // STH's input descriptor {requires, contentType}: the topic its input comes from (the
        // supervisor decides), and how it wants that input decoded.
        const descriptor = items.shift();
        if (descriptor.contentType) contentType = normaliseContentType(descriptor.contentType);
        if (typeof descriptor.requires === 'string') requires = descriptor.requires;
    }
    if (!items.length) throw new ExitError(EXIT.badMain, 'module.exports has no function');
    items.forEach((fn, i) => {
        if (typeof fn !== 'function') {
            const what = `module.exports[${i}] is ${typeof fn}, not a function`;
            throw new ExitError(EXIT.badMain, what);
        }
    });
    return { functions: items, contentType, requires };
}

/** Index just past `marker` found from `i` (`skip` = its length to pass), or the end. */
function endOf(source, marker, i, skip) {
    const at = source.indexOf(marker, i);
    return at < 0 ? source.length : at + skip;
}

/** Skips whitespace and comments in `source` from `i`. */
function skipBlank(source, i) {
    for (;;) {
        while (i < source.length && /\s/.test(source[i])) i++;
        if (source.startsWith('//', i)) i = endOf(source, '\n', i, 0);
        else if (source.startsWith('/*', i)) i = endOf(source, '*/', i, 2);
        else return i;
    }
}

/**
 * True when the first declared parameter has a default value.
 *
 * `fn.length` counts the parameters before the first one with a default (or a rest parameter),
 * so 0 with a non-empty, non-rest parameter list means exactly that. The source is read only to
 * tell `()` and `(...args)` apart from `(a = 1)`.
 */
function firstParameterHasDefault(fn) {
    if (fn.length !== 0) return false;
    const source = Function.prototype.toString.call(fn);
    const open = source.indexOf('(');
    if (open < 0) return false;
    const i = skipBlank(source, open + 1);
    return source[i] !== ')' && !source.startsWith('...', i);
}

/**
 * Whether the first function takes only the args (no input), in order of precedence:
 * its own `inputless` property, package.json "hub": {"inputless": ...}, then the heuristic.
 */
function isInputless(fn, pkg) {
    if (typeof fn.inputless === 'boolean') return fn.inputless;
    const declared = pkg && pkg.hub && pkg.hub.inputless;
    if (typeof declared === 'boolean') return declared;
    return firstParameterHasDefault(fn);
}

/** The start args: the spec's, else the package's default "args" (STH PR #700), else []. */
function startArgs(spec, pkg) {
    if (Array.isArray(spec.args) && spec.args.length) return spec.args;
    if (Array.isArray(pkg.args)) return pkg.args;
    return [];
}

// ------------------------------------------------------------------------------------------
// Running the sequence

function isReadableLike(value) {
    return value instanceof Readable
        || (typeof value?.pipe === 'function' && typeof value?.on === 'function');
}

/** An iterable to consume item by item, or null for a single value. */
function asIterable(value) {
    if (typeof value !== 'object' && typeof value !== 'function') return null;
    if (Buffer.isBuffer(value) || value instanceof Uint8Array) return null;
    if (typeof value[Symbol.asyncIterator] === 'function') return value;
    // An old-style stream (a pipe() without async iteration) wrapped into a modern Readable.
    if (isReadableLike(value)) return new Readable({ objectMode: true }).wrap(value);
    if (typeof value[Symbol.iterator] === 'function') return value;
    return null;
}

const GeneratorFunction = Object.getPrototypeOf(function* () {}).constructor;
const AsyncGeneratorFunction = Object.getPrototypeOf(async function* () {}).constructor;

/**
 * What a step returned, awaited and with functions called, as scramjet's `DataStream.from`
 * (which STH's runner applies to every step's value, the last included) takes it: a generator
 * function is called with no arguments and its generator is the stream; any other function is
 * called with `undefined` (from's options) and what it returns is taken the same way. A step
 * that returns `async function* () {...}` instead of calling it thus still streams its items.
 */
async function resolveStep(value) {
    let resolved = await value;
    while (typeof resolved === 'function') {
        resolved = resolved instanceof GeneratorFunction || resolved instanceof AsyncGeneratorFunction
            ? resolved()
            : await resolved(undefined);
    }
    return resolved;
}

/** What one pipeline step resolved to (resolveStep), as the next step's input stream. */
function toNextInput(value, index) {
    if (value === undefined || value === null) {
        throw new Error(`Pipeline function #${index} returned nothing: the next one has no input`);
    }
    if (value instanceof Readable) return value;
    const iterable = typeof value === 'string' ? null : asIterable(value);
    return Readable.from(iterable || [value], { objectMode: true });
}

/** Calls the pipeline's functions in turn; resolves to what the last one returned. */
async function runPipeline(functions, { context, input, args, inputless }) {
    let current = input;
    let result;
    for (let i = 0; i < functions.length; i++) {
        const fn = functions[i];
        result = i === 0 && inputless
            ? fn.call(context, ...args)
            : fn.call(context, current, ...args);
        if (i < functions.length - 1) current = toNextInput(await resolveStep(result), i);
    }
    return result;
}

/**
 * Writes everything the sequence produced to the output stream; `declare(value)` first, so a
 * returned stream's `.topic` is settled before its first byte.
 */
async function writeResult(result, writer, declare = async () => {}) {
    const returned = await result;
    const value = await resolveStep(returned);
    if (value === undefined || value === null) return;
    await declare(value);
    // The content type is read where STH reads it, on what the step returned (a function
    // included), and on the stream that function made.
    const contentType = value.contentType ?? returned.contentType;
    if (typeof value === 'object' && NDJSON_TYPES.has(normaliseContentType(contentType))) {
        writer.jsonItems = true;
    }
    const iterable = typeof value === 'string' ? null : asIterable(value);
    if (!iterable) {
        writer.push(value);
        return;
    }
    for await (const item of iterable) {
        if (writer.push(item)) await writer.flushFull();
    }
}

// ------------------------------------------------------------------------------------------
// The process: wiring, control messages, exit

class Runtime {
    constructor() {
        this.exiting = false;
        this.phase = 'loading';
        this.stopping = false;
        this.context = null;
    }

    openStreams() {
        this.control = new Control(FD.control);
        this.logStream = openWritable(FD.log);
        this.outputStream = openWritable(FD.output);
        this.logger = new Logger(this.logStream);
        this.writer = new OutputWriter(this.outputStream);
    }

    installFailureHandlers() {
        // Load errors are caught where the module is required; anything thrown later, from a
        // callback or a rejected promise nobody awaited, fails the instance while running.
        process.on('uncaughtException', (err) => {
            this.fail(err, this.phase === 'loading' ? EXIT.failedOnStart : EXIT.failedWhileRunning);
        });
        process.on('unhandledRejection', (err) => this.fail(err, EXIT.failedWhileRunning));
    }

    listenToControl() {
        this.control.on('message', (code, data) => this.onControl(code, data));
        this.control.on('invalid', (line) => this.logger.warn('Invalid control message', line));
        // The supervisor is gone: nobody could stop or kill this instance any more. (During an
        // exit already under way it may just have read our last message: let that exit finish.)
        this.control.on('closed', () => {
            if (!this.exiting) this.kill();
        });
    }

    onControl(code, data) {
        switch (code) {
            case MSG.stop:
                this.stop(data.timeout, data.canCallKeepalive === true);
                break;
            case MSG.kill:
                this.kill();
                break;
            case MSG.healthCheck:
                this.reportHealth();
                break;
            case MSG.declared:
                this.onDeclared?.(data);
                break;
            case MSG.event:
                try {
                    this.context?.deliverEvent(data.eventName, data.message);
                } catch (err) {
                    this.fail(err, EXIT.failedWhileRunning);
                }
                break;
            default:
                this.logger.debug('Ignored control message', { code, data });
        }
    }

    /** STH's `.topic`/`.contentType` on a returned stream: ask the supervisor, wait its answer. */
    async declareOutput(value) {
        if (typeof value !== 'object' || typeof value.topic !== 'string') return;
        const answered = new Promise((resolve) => { this.onDeclared = resolve; });
        const pang = { provides: value.topic };
        if (typeof value.contentType === 'string') pang.contentType = value.contentType;
        this.control.send(MSG.pang, pang);
        await Promise.race([answered, delay(DECLARE_TIMEOUT_MS)]);
    }

    async reportHealth() {
        const reply = this.context ? await this.context.health() : { healthy: true };
        this.control.send(MSG.health, reply);
    }

    async stop(timeout, canCallKeepalive) {
        if (this.stopping || this.exiting) return;
        this.stopping = true;
        if (this.context) {
            // Only a keepAlive called by the stop handlers themselves counts (as in STH).
            this.context._keepAliveRequested = false;
            await this.context.runStopHandlers(timeout, canCallKeepalive);
            if (canCallKeepalive && this.context._keepAliveRequested) {
                this.stopping = false;
                return;
            }
        }
        await this.exit(EXIT.stopped, () => this.control.send(MSG.stopped, {}));
    }

    kill() {
        if (this.exiting === 'killed') return;
        this.exiting = 'killed';
        this.context?.runKillHandlers();
        process.exit(EXIT.killed);
    }

    fail(err, code) {
        if (this.exiting) return;
        const text = err instanceof Error
            ? err.stack || String(err)
            : `Error: ${util.inspect(err)}`;
        process.stderr.write(text + '\n');
        this.logger.error('Sequence failed', err instanceof Error ? err : { error: text });
        this.exit(code);
    }

    /** Finishes as completed, after the sequence's exitTimeout if it set one. */
    async complete() {
        if (this.exiting) return;
        const wait = Number(this.context?.exitTimeout) || 0;
        if (wait > 0) await delay(wait);
        await this.exit(EXIT.completed, () => this.control.send(MSG.completed, {}), true);
    }

    /**
     * Flushes every stream the child writes (so no output, print or log line is lost), sends the
     * final control message, and exits. The first exit wins; a kill still overrides it.
     */
    async exit(code, announce = () => {}, endOutput = false) {
        if (this.exiting) return;
        this.exiting = true;
        const flushed = (async () => {
            if (endOutput) await this.writer.end();
            else {
                this.writer.flush();
                await flushWritable(this.outputStream);
            }
            await Promise.all([
                flushWritable(process.stdout),
                flushWritable(process.stderr),
                flushWritable(this.logStream),
            ]);
            announce();
            await this.control.flush();
        })();
        await Promise.race([flushed, delay(EXIT_FLUSH_TIMEOUT_MS)]);
        process.exit(code);
    }

    async load(spec) {
        const pkg = readPackageJson(spec);
        const mainPath = resolveMain(spec, pkg);
        let exported;
        try {
            exported = await loadModule(mainPath);
        } catch (err) {
            this.fail(err, EXIT.failedOnStart);
            return null;
        }
        const pipeline = toPipeline(exported);
        return {
            ...pipeline,
            args: startArgs(spec, pkg),
            inputless: isInputless(pipeline.functions[0], pkg),
        };
    }

    async run(spec) {
        const sequence = await this.load(spec);
        if (!sequence) return;
        this.context = new Context({
            spec,
            logger: this.logger,
            control: this.control,
            finish: (err) => (err ? this.fail(err, EXIT.failedWhileRunning) : this.complete()),
        });
        const input = createInputStream(
            () => openReadable(FD.input), sequence.contentType, this.logger);
        if (sequence.requires) {
            const pang = { requires: sequence.requires };
            if (sequence.contentType) pang.contentType = sequence.contentType;
            this.control.send(MSG.pang, pang);
        }
        this.control.send(MSG.ping, { pid: process.pid });
        this.phase = 'running';
        try {
            const result = runPipeline(sequence.functions, {
                context: this.context,
                input,
                args: sequence.args,
                inputless: sequence.inputless,
            });
            await writeResult(result, this.writer, (value) => this.declareOutput(value));
        } catch (err) {
            this.fail(err, EXIT.failedWhileRunning);
            return;
        }
        await this.complete();
    }

    async main() {
        let spec;
        try {
            spec = readSpec();
        } catch (err) {
            process.stderr.write(`${err.message}\n`);
            process.exitCode = err.exitCode || EXIT.launchFailed;
            return;
        }
        this.openStreams();
        this.installFailureHandlers();
        this.listenToControl();
        if (spec.workdir && fs.existsSync(spec.workdir)) process.chdir(spec.workdir);
        try {
            await this.run(spec);
        } catch (err) {
            if (!(err instanceof ExitError)) throw err;
            process.stderr.write(`${err.message}\n`);
            this.logger.error(err.message);
            await this.exit(err.exitCode);
        }
    }
}

if (require.main === module) {
    new Runtime().main();
}

module.exports = { firstParameterHasDefault, isInputless, LineSplitter, OutputWriter };
