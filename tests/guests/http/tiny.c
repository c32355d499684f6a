/* A wasi:http/proxy guest in C without a libc, small enough that a request costs the host, not the guest.

The core module lowers the few wasi:http and wasi:io calls it makes by hand (the canonical ABI: handles as
i32, results and lists through a return area or cabi_realloc), under the `cm32p2` names with the interface
version "0.2": `wasm-tools component embed` then binds the one module to any 0.2.x WIT (tests build it
against 0.2.0, 0.2.3 and 0.2.8). Its answer depends on the path:

  /            a greeting (the benchmark's hello)
  /echo        the request body streamed back as it arrives (read, subscribe; check-write, write)
  /trailers    the request body counted, its trailers listed in the body; trailers on the response too
  /stream/N    N MiB written as fast as the host takes them; on stderr, how many bytes the host had
               accepted when check-write first said 0 (a client that does not read must stop the guest)
  /memory      memory grown a page at a time until the host refuses, the pages reached on stderr, a trap
  /spin        a loop without end
  /ignore      never reads the body or answers: it waits on a clock an hour away
  /hold/N      appends a 1 MiB header value N times to one fields, then greets
  /hold-body/N makes N responses and writes 1 MiB into each one's body before any is set, then greets
               (what the host keeps for a request is bounded: past it the guest traps)
*/

#include <stddef.h>
#include <stdint.h>

#define IMPORT(module, name) __attribute__((import_module("cm32p2|" module "@0.2"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

typedef uint32_t handle;

IMPORT("wasi:io/poll", "[method]pollable.block") void pollable_block(handle);
IMPORT("wasi:io/poll", "pollable_drop") void pollable_drop(handle);
IMPORT("wasi:io/streams", "[method]input-stream.read") void input_read(handle, uint64_t, void *);
IMPORT("wasi:io/streams", "[method]input-stream.subscribe") handle input_subscribe(handle);
IMPORT("wasi:io/streams", "input-stream_drop") void input_drop(handle);
IMPORT("wasi:io/streams", "[method]output-stream.check-write") void output_check_write(handle, void *);
IMPORT("wasi:io/streams", "[method]output-stream.write") void output_write(handle, const void *, size_t, void *);
IMPORT("wasi:io/streams", "[method]output-stream.blocking-write-and-flush")
void output_write_and_flush(handle, const void *, size_t, void *);
IMPORT("wasi:io/streams", "[method]output-stream.blocking-flush") void output_blocking_flush(handle, void *);
IMPORT("wasi:io/streams", "[method]output-stream.subscribe") handle output_subscribe(handle);
IMPORT("wasi:io/streams", "output-stream_drop") void output_drop(handle);
IMPORT("wasi:cli/stderr", "get-stderr") handle get_stderr(void);
IMPORT("wasi:clocks/monotonic-clock", "subscribe-duration") handle subscribe_duration(uint64_t);
IMPORT("wasi:http/types", "[constructor]fields") handle fields_new(void);
IMPORT("wasi:http/types", "[method]fields.append")
void fields_append(handle, const char *, size_t, const void *, size_t, void *);
IMPORT("wasi:http/types", "[method]fields.entries") void fields_entries(handle, void *);
IMPORT("wasi:http/types", "fields_drop") void fields_drop(handle);
IMPORT("wasi:http/types", "[method]incoming-request.path-with-query") void request_path(handle, void *);
IMPORT("wasi:http/types", "[method]incoming-request.consume") void request_consume(handle, void *);
IMPORT("wasi:http/types", "incoming-request_drop") void request_drop(handle);
IMPORT("wasi:http/types", "[method]incoming-body.stream") void incoming_body_stream(handle, void *);
IMPORT("wasi:http/types", "[static]incoming-body.finish") handle incoming_body_finish(handle);
IMPORT("wasi:http/types", "[method]future-trailers.subscribe") handle trailers_subscribe(handle);
IMPORT("wasi:http/types", "[method]future-trailers.get") void trailers_get(handle, void *);
IMPORT("wasi:http/types", "future-trailers_drop") void trailers_drop(handle);
IMPORT("wasi:http/types", "[constructor]outgoing-response") handle response_new(handle);
IMPORT("wasi:http/types", "[method]outgoing-response.body") void response_body(handle, void *);
IMPORT("wasi:http/types", "[method]outgoing-body.write") void outgoing_body_write(handle, void *);
IMPORT("wasi:http/types", "[static]outgoing-body.finish") void outgoing_body_finish(handle, int32_t, handle, void *);
/* result<own<outgoing-response>, error-code>, flattened: the case, then the joined payload slots */
IMPORT("wasi:http/types", "[static]response-outparam.set")
void outparam_set(handle, int32_t, int32_t, int32_t, int64_t, int32_t, int32_t, int32_t, int32_t);

/* ---- memory: a bump allocator the host fills lists and strings through ---------------------------------- */

extern unsigned char __heap_base;
static uintptr_t heap_top;

static void copy(void *to, const void *from, size_t n) {
    __builtin_memcpy(to, from, n);  /* memory.copy (bulk memory) */
}

EXPORT("cm32p2_realloc") void *cabi_realloc(void *old, size_t old_size, size_t align, size_t size) {
    if (!heap_top)
        heap_top = (uintptr_t)&__heap_base;
    uintptr_t at = (heap_top + align - 1) & ~(uintptr_t)(align - 1);
    size_t have = __builtin_wasm_memory_size(0) * 65536;
    if (at + size > have && __builtin_wasm_memory_grow(0, (at + size - have + 65535) / 65536) == (size_t)-1)
        __builtin_trap();
    heap_top = at + size;
    if (old)
        copy((void *)at, old, old_size < size ? old_size : size);
    return (void *)at;
}

/* ---- the return area and the calls the handlers share ---------------------------------------------------- */

static uint64_t area[8]; /* a callee's results, 8-aligned: offsets as the canonical ABI lays them out */
#define AT(type, offset) (*(type *)((uint8_t *)area + (offset)))

static size_t length(const char *s) {
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static int starts(const char *s, size_t n, const char *prefix) {
    size_t p = length(prefix);
    if (n < p)
        return 0;
    for (size_t i = 0; i < p; i++)
        if (s[i] != prefix[i])
            return 0;
    return 1;
}

static size_t decimal(char *to, uint64_t value) {
    char digits[20];
    size_t n = 0;
    do
        digits[n++] = (char)('0' + value % 10);
    while (value /= 10);
    for (size_t i = 0; i < n; i++)
        to[i] = digits[n - 1 - i];
    return n;
}

static void note(const char *what, uint64_t value) { /* "tiny: WHAT VALUE\n" on stderr */
    char line[96];
    size_t n = 0, w = length(what);
    copy(line, "tiny: ", 6);
    n = 6;
    copy(line + n, what, w);
    n += w;
    line[n++] = ' ';
    n += decimal(line + n, value);
    line[n++] = '\n';
    handle err = get_stderr();
    output_write_and_flush(err, line, n, area);
    output_drop(err);
}

static void block_on(handle pollable) {
    pollable_block(pollable);
    pollable_drop(pollable);
}

static uint64_t accepted; /* body bytes the host has taken */
static int reported;      /* whether the first refusal of check-write was noted */

/* Write all of `data`, as much as check-write allows at a time, waiting when it allows nothing. */
static int write_all(handle out, const uint8_t *data, size_t size, int report) {
    while (size) {
        output_check_write(out, area);
        if (AT(uint8_t, 0))
            return -1;
        uint64_t allowed = AT(uint64_t, 8);
        if (!allowed) {
            if (report && !reported++)
                note("check-write said 0 after", accepted);
            block_on(output_subscribe(out));
            continue;
        }
        size_t take = size < allowed ? size : (size_t)allowed;
        output_write(out, data, take, area);
        if (AT(uint8_t, 0))
            return -1;
        accepted += take;
        data += take;
        size -= take;
    }
    return 0;
}

static handle header(handle fields, const char *name, const char *value, size_t size) {
    fields_append(fields, name, length(name), value, size, area);
    return fields;
}

/* Set the response (200, these headers) and return its body's output stream; *body gets the body. */
static handle respond(handle outparam, handle fields, handle *body) {
    handle response = response_new(fields);
    response_body(response, area);
    *body = AT(uint32_t, 4);
    outparam_set(outparam, 0, (int32_t)response, 0, 0, 0, 0, 0, 0);
    outgoing_body_write(*body, area);
    return AT(uint32_t, 4);
}

static void finish(handle body, handle out, handle trailers, int has_trailers) {
    output_blocking_flush(out, area);
    output_drop(out);
    outgoing_body_finish(body, has_trailers, trailers, area);
}

/* The request body's stream (and, through *body, the incoming-body it belongs to). */
static handle request_stream(handle request, handle *body) {
    request_consume(request, area);
    *body = AT(uint32_t, 4);
    incoming_body_stream(*body, area);
    return AT(uint32_t, 4);
}

/* The next piece of the stream, waiting for one; 0 at its end. The bytes live until heap_top is reset. */
static size_t read_some(handle in, const uint8_t **data) {
    for (;;) {
        input_read(in, 65536, area);
        if (AT(uint8_t, 0))
            return 0; /* closed (the end) or failed */
        size_t n = AT(uint32_t, 8);
        if (n) {
            *data = (const uint8_t *)(uintptr_t)AT(uint32_t, 4);
            return n;
        }
        block_on(input_subscribe(in));
    }
}

/* ---- the handlers ------------------------------------------------------------------------------------------ */

static const char HELLO[] = "Hello from a wasi:http component!\n";

static void hello(handle outparam) {
    handle body;
    handle out = respond(outparam, header(fields_new(), "content-type", "text/plain", 10), &body);
    output_write_and_flush(out, HELLO, sizeof HELLO - 1, area);
    finish(body, out, 0, 0);
}

static void echo(handle request, handle outparam) {
    handle in_body, body;
    handle in = request_stream(request, &in_body);
    handle out = respond(outparam, fields_new(), &body);
    const uint8_t *data;
    size_t n;
    uintptr_t mark = heap_top;
    while ((n = read_some(in, &data)) && write_all(out, data, n, 0) == 0)
        heap_top = mark;
    input_drop(in);
    trailers_drop(incoming_body_finish(in_body));
    finish(body, out, 0, 0);
}

static void trailers(handle request, handle outparam) {
    handle in_body, body;
    handle in = request_stream(request, &in_body);
    const uint8_t *data;
    uint64_t total = 0;
    size_t n;
    uintptr_t mark = heap_top;
    while ((n = read_some(in, &data))) {
        total += n;
        heap_top = mark;
    }
    input_drop(in);
    handle future = incoming_body_finish(in_body);
    block_on(trailers_subscribe(future));
    trailers_get(future, area);
    /* option<result<result<option<trailers>, error-code>>>: some @0, ok @8, ok @16, some @24, handle @28 */
    int has = AT(uint8_t, 0) == 1 && AT(uint8_t, 8) == 0 && AT(uint8_t, 16) == 0 && AT(uint8_t, 24) == 1;
    handle received = AT(uint32_t, 28);
    trailers_drop(future);
    handle out = respond(outparam, fields_new(), &body);
    if (has) { /* list<tuple<string, list<u8>>>: each entry name ptr, len, value ptr, len */
        fields_entries(received, area);
        const uint32_t *entries = (const uint32_t *)(uintptr_t)AT(uint32_t, 0);
        size_t count = AT(uint32_t, 4);
        for (size_t i = 0; i < count; i++) {
            const uint32_t *e = entries + 4 * i;
            write_all(out, (const uint8_t *)(uintptr_t)e[0], e[1], 0);
            write_all(out, (const uint8_t *)": ", 2, 0);
            write_all(out, (const uint8_t *)(uintptr_t)e[2], e[3], 0);
            write_all(out, (const uint8_t *)"\n", 1, 0);
        }
        fields_drop(received);
    }
    char count[20];
    handle sent = header(fields_new(), "x-body-bytes", count, decimal(count, total));
    finish(body, out, header(sent, "x-trailer", "done", 4), 1);
}

static uint8_t block[65536];

static void stream(handle outparam, const char *path, size_t size) {
    uint64_t mib = 0;
    for (size_t i = 8; i < size && path[i] >= '0' && path[i] <= '9'; i++)
        mib = mib * 10 + (uint64_t)(path[i] - '0');
    for (size_t i = 0; i < sizeof block; i++)
        block[i] = (uint8_t)i;
    handle body;
    handle out = respond(outparam, fields_new(), &body);
    for (uint64_t left = mib << 20; left; left -= sizeof block)
        if (write_all(out, block, sizeof block, 1))
            break;
    finish(body, out, 0, 0);
}

static uint8_t mib[1 << 20];

static void hold(handle outparam, const char *path, size_t size, size_t skip, int bodies) {
    uint64_t n = 0;
    for (size_t i = skip; i < size && path[i] >= '0' && path[i] <= '9'; i++)
        n = n * 10 + (uint64_t)(path[i] - '0');
    for (size_t i = 0; i < sizeof mib; i++)
        mib[i] = 'x';
    handle fields = fields_new();
    for (uint64_t i = 0; i < n; i++) {
        if (!bodies) {
            header(fields, "x-big", (const char *)mib, sizeof mib);
            continue;
        }
        response_body(response_new(fields_new()), area);
        outgoing_body_write(AT(uint32_t, 4), area);
        handle out = AT(uint32_t, 4);
        output_check_write(out, area);
        output_write(out, mib, (size_t)AT(uint64_t, 8), area);
    }
    fields_drop(fields);
    hello(outparam);
}

static void memory(void) {
    size_t pages = __builtin_wasm_memory_size(0);
    while (__builtin_wasm_memory_grow(0, 1) != (size_t)-1) {
        ((volatile uint8_t *)(pages * 65536))[0] = 1; /* touched: the host's memory, not a reservation */
        pages++;
    }
    note("memory stopped growing at pages", pages);
    __builtin_trap();
}

EXPORT("cm32p2|wasi:http/incoming-handler@0.2|handle") void handle_request(handle request, handle outparam) {
    request_path(request, area);
    const char *path = AT(uint8_t, 0) ? (const char *)(uintptr_t)AT(uint32_t, 4) : "/";
    size_t size = AT(uint8_t, 0) ? AT(uint32_t, 8) : 1;
    if (starts(path, size, "/echo"))
        echo(request, outparam);
    else if (starts(path, size, "/trailers"))
        trailers(request, outparam);
    else if (starts(path, size, "/stream/"))
        stream(outparam, path, size);
    else if (starts(path, size, "/hold-body/"))
        hold(outparam, path, size, 11, 1);
    else if (starts(path, size, "/hold/"))
        hold(outparam, path, size, 6, 0);
    else if (starts(path, size, "/memory"))
        memory();
    else if (starts(path, size, "/spin"))
        for (volatile int forever = 1; forever;)
            ;
    else if (starts(path, size, "/ignore"))
        block_on(subscribe_duration(3600ull * 1000000000ull));
    else
        hello(outparam);
    request_drop(request);
}
