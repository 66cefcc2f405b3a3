/*
 * kiln.h — the C API of kiln, a JIT linker and JIT code-memory runtime.
 *
 * Kiln takes relocatable ELF objects, static archives and graphs a JIT builds in memory, lays
 * them out in executable memory (W^X), resolves their symbols against each other, libraries
 * and the host process, applies relocations, registers unwind and debug information, and runs
 * them — in this process or in a child `kiln-executor` process.
 *
 *     kiln_session_t *s;
 *     kiln_unit_t unit;
 *     uint64_t addr;
 *     kiln_error_t *err = kiln_session_new(&s);
 *     if (!err) err = kiln_session_add_file(s, "f.o");
 *     if (!err) err = kiln_session_link(s, &unit);
 *     if (!err) err = kiln_session_run_initializers(s);
 *     if (!err) err = kiln_session_lookup(s, "f", &addr);
 *     if (!err) printf("%d\n", ((int (*)(int))(uintptr_t)addr)(41));
 *     if (err) { const char *m; size_t n; kiln_error_message(err, &m, &n);
 *                fprintf(stderr, "%.*s\n", (int)n, m); kiln_error_delete(err); }
 *     kiln_session_delete(s);
 *
 * Build: `pkg-config --cflags --libs kiln` (shared) or `pkg-config --static --cflags --libs
 * kiln` (libkiln.a). Install: `scripts/install-capi PREFIX` in kiln's repository.
 *
 * CONVENTIONS
 *
 * - Objects are opaque handles: kiln_session_t, kiln_graph_t, kiln_error_t, kiln_generated_t.
 *   A handle is not an address (never dereference one). Each has exactly one `_delete`.
 * - Every function that can fail returns a kiln_error_t *: NULL on success, else an error the
 *   caller owns and deletes with kiln_error_delete. Results go through out-pointers, which are
 *   written only on success.
 * - A NULL, deleted, or wrong-type handle, a NULL required pointer, a string that is not UTF-8
 *   where a name is expected, a unit that was removed, an unknown enum value: each is an error
 *   with a message (kind KILN_ERROR_INVALID_ARGUMENT, _INVALID_HANDLE or _UNKNOWN_UNIT), never
 *   a crash. (Pointers to strings and arrays must still point to what they claim: kiln cannot
 *   check a dangling pointer.)
 * - No Rust panic crosses into C: an internal failure is an error of kind KILN_ERROR_PANIC.
 * - Names (symbols, sections, graphs, scopes) are NUL-terminated UTF-8. Paths are any bytes.
 * - Callbacks must return normally: no longjmp and no C++ exception out of a callback.
 *
 * THREADS
 *
 * - kiln_session_t: every function may be called from any thread, concurrently (links in
 *   parallel share the session; a link runs outside most of its locks). Deleting a session
 *   while another thread is inside a call on it is safe: that call completes, later calls get
 *   an error, and the session ends when the last call returns.
 * - kiln_graph_t: may be used from any thread; calls on one graph are serialized by a lock
 *   (the order of concurrent additions is the caller's to arrange).
 * - kiln_error_t: immutable; may be read from any thread. The message pointer from
 *   kiln_error_message is valid until the error is deleted.
 * - kiln_generated_t: valid only inside the generator callback it was passed to.
 * - kiln_unit_t, kiln_scope_t, kiln_section_t, kiln_block_t: plain numbers.
 */
#ifndef KILN_H
#define KILN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================================== */
/* Types                                                                                    */
/* ======================================================================================== */

/* A JIT session: links inputs into units in one executor (this process, or a child). */
typedef struct kiln_session_t kiln_session_t;
/* An in-memory graph a JIT builds: sections of blocks, symbols in blocks, edges. */
typedef struct kiln_graph_t kiln_graph_t;
/* An error: a kind and a message. */
typedef struct kiln_error_t kiln_error_t;
/* A definition generator's answer, filled in by its callback. */
typedef struct kiln_generated_t kiln_generated_t;

/* A linked unit of a session: numbered from 1, never reused within the session. */
typedef uint64_t kiln_unit_t;
/* A scope (a named symbol table with a search order); KILN_SCOPE_DEFAULT always exists. */
typedef uint32_t kiln_scope_t;
/* A section of a graph, numbered from 0 in the order added. */
typedef uint32_t kiln_section_t;
/* A block of a graph, numbered from 0 in the order added (across all its sections). */
typedef uint32_t kiln_block_t;
typedef uint32_t kiln_edge_kind_t;
typedef uint32_t kiln_prot_t;
typedef uint32_t kiln_visibility_t;
typedef uint32_t kiln_error_kind_t;

enum { KILN_SCOPE_DEFAULT = 0 };

/* ======================================================================================== */
/* Errors                                                                                   */
/* ======================================================================================== */

enum kiln_error_kind_enum {
    KILN_ERROR_OTHER = 0,
    /* A NULL pointer where one is required, a name that is not UTF-8, an unknown enum value
       or flag, a section or block number the graph did not hand out. */
    KILN_ERROR_INVALID_ARGUMENT = 1,
    /* A handle that is NULL, deleted, of another type, or not one kiln returned. */
    KILN_ERROR_INVALID_HANDLE = 2,
    /* A kiln_unit_t that was removed, or never linked in this session. */
    KILN_ERROR_UNKNOWN_UNIT = 3,
    /* A lookup of a name no live unit defines. */
    KILN_ERROR_UNDEFINED = 4,
    /* A link found symbols undefined, not on the allow-list, or thread-local outside the JIT'd
       code; nothing was linked and the inputs stay added. The message lists them all. */
    KILN_ERROR_UNRESOLVED = 5,
    /* Two strong definitions of one symbol. */
    KILN_ERROR_DUPLICATE = 6,
    KILN_ERROR_MALFORMED = 7,
    KILN_ERROR_UNSUPPORTED = 8,
    /* A relocation could not be applied (out of range, ...): file, section, offset named. */
    KILN_ERROR_FIXUP = 9,
    KILN_ERROR_IO = 10,
    /* A library named with -l, a scope name or the kiln-executor program was not found. */
    KILN_ERROR_NOT_FOUND = 11,
    /* kiln_session_remove: other live units bind to the unit. */
    KILN_ERROR_HAS_DEPENDENTS = 12,
    /* kiln_session_remove: a link in progress on another thread binds to the unit. */
    KILN_ERROR_UNIT_IN_USE = 13,
    /* The API was misused another way (e.g. calling a name that is not a function). */
    KILN_ERROR_USAGE = 14,
    /* The executor refused or failed a request, or its process is gone. */
    KILN_ERROR_EXECUTOR = 15,
    /* A callback returned an error (and errors made with kiln_error_new). */
    KILN_ERROR_CALLBACK = 16,
    /* kiln broke one of its own rules: a bug. */
    KILN_ERROR_INTERNAL = 17,
    /* kiln panicked inside the call (caught at the boundary): a bug. */
    KILN_ERROR_PANIC = 18
};

/* The message of `e`: `*msg` gets a pointer to `*len` bytes of UTF-8, followed by a NUL (so
   it is also a C string), valid until `e` is deleted. Either out-pointer may be NULL. For a
   handle that is not a live error, a static message saying so. */
void kiln_error_message(const kiln_error_t *e, const char **msg, size_t *len);

/* The kind of `e` (KILN_ERROR_INVALID_HANDLE for a handle that is not a live error). */
kiln_error_kind_t kiln_error_kind(const kiln_error_t *e);

/* A new error of kind KILN_ERROR_CALLBACK with a copy of `message` (NULL: no message; bytes
   that are not UTF-8 are replaced), for a callback to return. */
kiln_error_t *kiln_error_new(const char *message);

/* Delete an error. NULL, or a handle already deleted, is ignored. */
void kiln_error_delete(kiln_error_t *e);

/* The version of kiln behind this library ("0.1.0"), a static string. */
const char *kiln_version(void);

/* ======================================================================================== */
/* Sessions                                                                                 */
/* ======================================================================================== */

/* A session whose code runs in this process. Debug sinks start as KILN_DEBUG in the
   environment says (default: gdb and valgrind registration on); see kiln_session_set_debug. */
kiln_error_t *kiln_session_new(kiln_session_t **out);

/* A session whose code runs in a new child process, `kiln-executor` (see kiln's
   docs/protocol.md): the program at `executor_path_or_null`, or if NULL the one named by
   $KILN_EXECUTOR, else `kiln-executor` next to this program, else one on $PATH
   (`scripts/install-capi PREFIX` installs it in PREFIX/bin). The child shares this process's
   standard input, output and error. */
kiln_error_t *kiln_session_new_spawned(const char *executor_path_or_null, kiln_session_t **out);

/* Delete a session: every unit is removed (newest first; destructors run, memory released).
   NULL, or a handle already deleted, is ignored. */
void kiln_session_delete(kiln_session_t *s);

/* ---- inputs for the next kiln_session_link (they stay added if that link fails) ---- */

/* Add a file by what it contains: a relocatable object, a static archive (members linked when
   needed), a shared library (loaded into the executor), or a GNU ld script. */
kiln_error_t *kiln_session_add_file(kiln_session_t *s, const char *path);

/* Add a relocatable ELF object from memory (copied). `name` names it in messages and
   debuggers. */
kiln_error_t *kiln_session_add_object(kiln_session_t *s, const char *name, const uint8_t *bytes,
                                      size_t len);

/* Add a static archive from memory (copied). */
kiln_error_t *kiln_session_add_archive(kiln_session_t *s, const char *name, const uint8_t *bytes,
                                       size_t len);

/* `-l SPEC`: `NAME` (libNAME.a or libNAME.so) or `:FILE`, found as ld finds it. */
kiln_error_t *kiln_session_add_library(kiln_session_t *s, const char *spec);

/* Load a shared library into the executor now; its symbols are searched after the session's
   units and before the process's. */
kiln_error_t *kiln_session_add_shared_library(kiln_session_t *s, const char *path);

/* Add a copy of graph `g` as it is now (the graph stays the caller's). */
kiln_error_t *kiln_session_add_graph(kiln_session_t *s, const kiln_graph_t *g);

/* ---- settings ---- */

/* Define an absolute symbol for every later link (wins over libraries and the process). In
   process, `addr` may be the address of a host function: `(uint64_t)(uintptr_t)&f`. */
kiln_error_t *kiln_session_define(kiln_session_t *s, const char *name, uint64_t addr);

/* From now on, only these `n` names may be bound outside the linked code (to libraries, the
   process, definitions, generators' addresses); any other reference fails the link with
   KILN_ERROR_UNRESOLVED, naming the symbol and who references it. `n` may be 0. */
kiln_error_t *kiln_session_set_allow_list(kiln_session_t *s, const char *const *names, size_t n);

/* Any name may be bound again. */
kiln_error_t *kiln_session_clear_allow_list(kiln_session_t *s);

/* Whether symbols of the executor process itself may be bound (default: true). */
kiln_error_t *kiln_session_set_process_symbols(kiln_session_t *s, bool on);

enum kiln_debug_enum {
    /* Register each linked input with the GDB JIT interface (gdb sees functions, lines). */
    KILN_DEBUG_GDB = 1,
    /* Append the unit's symbols to /tmp/perf-PID.map (perf report names JIT'd functions). */
    KILN_DEBUG_PERF_MAP = 2,
    /* Write DIR/jit-PID.dump (perf inject --jit). */
    KILN_DEBUG_JITDUMP = 4,
    /* Tell valgrind when code is made and freed. */
    KILN_DEBUG_VALGRIND = 8
};

/* Which debugger and profiler sinks learn about the units linked from now on: a set of
   KILN_DEBUG_* flags. `jitdump_dir` is the directory of the jitdump file (NULL: the current
   directory); it must be NULL unless `sinks` has KILN_DEBUG_JITDUMP. */
kiln_error_t *kiln_session_set_debug(kiln_session_t *s, uint32_t sinks, const char *jitdump_dir);

/* ---- linking ---- */

/* Link everything added since the last link into one unit of the default scope, finalized in
   the executor (initializers not run yet). Names nothing defines go to the definition
   generators. On failure nothing is linked and the inputs stay added: add what was missing and
   link again. */
kiln_error_t *kiln_session_link(kiln_session_t *s, kiln_unit_t *out_unit);

/* Link a copy of graph `g` alone into a unit of the default scope (or of `scope`). */
kiln_error_t *kiln_session_link_graph(kiln_session_t *s, const kiln_graph_t *g,
                                      kiln_unit_t *out_unit);
kiln_error_t *kiln_session_link_graph_in(kiln_session_t *s, kiln_scope_t scope,
                                         const kiln_graph_t *g, kiln_unit_t *out_unit);

/* Run the initializers (.init_array, constructors) of every unit not yet initialized, oldest
   first. */
kiln_error_t *kiln_session_run_initializers(kiln_session_t *s);

/* ---- lookups ---- */

/* The address of `name` as units of the default scope see it; KILN_ERROR_UNDEFINED if no live
   unit defines it (host and library symbols are not looked up here). */
kiln_error_t *kiln_session_lookup(kiln_session_t *s, const char *name, uint64_t *out_addr);

/* `name` as units of `scope` see it (their own scope's symbols, hidden ones included, then the
   exported symbols of the scopes searched): its address, and if the pointers are not NULL its
   size and the unit defining it. */
kiln_error_t *kiln_session_lookup_symbol(kiln_session_t *s, kiln_scope_t scope, const char *name,
                                         uint64_t *out_addr, uint64_t *out_size,
                                         kiln_unit_t *out_unit);

/* ---- units ---- */

/* Remove a unit: its destructors run, its registrations are undone, its memory is released and
   its symbols disappear (a later unit may define them again). Refused (KILN_ERROR_HAS_DEPENDENTS)
   while other live units bind to it. */
kiln_error_t *kiln_session_remove(kiln_session_t *s, kiln_unit_t unit);

/* Remove `unit` and every unit depending on it, dependents first. The units removed are written
   to `removed` (as many as `cap` allows; `removed` may be NULL if `cap` is 0), their number to
   `*out_count`. */
kiln_error_t *kiln_session_remove_with_dependents(kiln_session_t *s, kiln_unit_t unit,
                                                  kiln_unit_t *removed, size_t cap,
                                                  size_t *out_count);

/* The live units that bind to `unit` (dependents) or that `unit` binds to (dependencies), in
   increasing order: written to `out_units` as many as `cap` allows, their number to
   `*out_count` (call with `cap` 0 to learn the size). */
kiln_error_t *kiln_session_dependents(kiln_session_t *s, kiln_unit_t unit, kiln_unit_t *out_units,
                                      size_t cap, size_t *out_count);
kiln_error_t *kiln_session_dependencies(kiln_session_t *s, kiln_unit_t unit,
                                        kiln_unit_t *out_units, size_t cap, size_t *out_count);

/* ---- scopes (like ORC's JITDylibs) ---- */

/* A new, empty scope. Its units see their own scope first, then the default scope. A name may
   be used once. */
kiln_error_t *kiln_session_create_scope(kiln_session_t *s, const char *name,
                                        kiln_scope_t *out_scope);

/* The scope named `name` (KILN_ERROR_NOT_FOUND if none). */
kiln_error_t *kiln_session_scope_by_name(kiln_session_t *s, const char *name,
                                         kiln_scope_t *out_scope);

/* The `n` scopes units of `scope` search after `scope` itself, in order (only their exported
   symbols are visible). */
kiln_error_t *kiln_session_set_search_order(kiln_session_t *s, kiln_scope_t scope,
                                            const kiln_scope_t *order, size_t n);

/* ---- definition generators ---- */

/* Asked for `name` (`name_len` bytes, NUL-terminated) that a link into `scope` needs and
   nothing else defines. Answer with one kiln_generated_* call on `answer`, or with none for
   "not mine" (the next generator is asked). Return NULL, or an error (from kiln_error_new) to
   fail the link; kiln takes and deletes that error, and the link fails with
   KILN_ERROR_CALLBACK and the error's message.
   Runs on the linking thread, with no kiln lock held: it may use the session (link, look up).
   Links on several threads may call it at once. */
typedef kiln_error_t *(*kiln_generator_fn)(void *user, const char *name, size_t name_len,
                                           kiln_scope_t scope, kiln_generated_t *answer);

/* Ask `callback` (with `user`) for names that units of `scope` (and of scopes searching it)
   need and nothing defines. Generators are asked in the order added. `user` must stay valid as
   long as the session, and be usable from any thread that links. */
kiln_error_t *kiln_session_add_generator(kiln_session_t *s, kiln_scope_t scope,
                                         kiln_generator_fn callback, void *user);

/* The name is defined at `addr` (a host function, a runtime routine). */
kiln_error_t *kiln_generated_address(kiln_generated_t *answer, uint64_t addr);

/* A copy of graph `g`, which defines the name, is linked into the same unit (its own missing
   names go to the generators too). The graph stays the caller's. */
kiln_error_t *kiln_generated_graph(kiln_generated_t *answer, const kiln_graph_t *g);

/* A relocatable object (copied) that defines the name is linked into the same unit. */
kiln_error_t *kiln_generated_object(kiln_generated_t *answer, const char *name,
                                    const uint8_t *bytes, size_t len);

/* ---- running code ---- */

/* Call `void name(void)`, a function of a live unit, in the executor. (In process a program
   may instead call the address from kiln_session_lookup through a function pointer.) */
kiln_error_t *kiln_session_call_void(kiln_session_t *s, const char *name);

/* Call `int entry(int argc, char **argv, char **envp)` in the executor with the `argc`
   strings of `argv` (argv[0] is the program name; bytes that are not UTF-8 are replaced). */
kiln_error_t *kiln_session_run_main(kiln_session_t *s, const char *entry,
                                    const char *const *argv, size_t argc, int32_t *out_status);

/* Change 4 or 8 naturally aligned bytes of finalized code or read-only data at `addr` while
   it may run (e.g. retarget a call's rel32, change an immediate): stored atomically, then the
   instruction cache is made coherent. */
kiln_error_t *kiln_session_patch(kiln_session_t *s, uint64_t addr, const uint8_t *bytes,
                                 size_t len);

/* ======================================================================================== */
/* Graphs                                                                                   */
/* ======================================================================================== */

/* Memory protection of a graph section. */
enum kiln_prot_enum {
    KILN_PROT_READ = 1,
    KILN_PROT_READ_WRITE = 2,
    KILN_PROT_READ_EXEC = 3
};

enum kiln_visibility_enum {
    /* Visible to other units and to lookups. */
    KILN_VISIBILITY_DEFAULT = 0,
    /* Visible within its scope only. */
    KILN_VISIBILITY_HIDDEN = 1,
    /* Visible to edges of this graph only. */
    KILN_VISIBILITY_LOCAL = 2
};

/* Flags of kiln_graph_add_symbol. */
enum kiln_symbol_flags_enum {
    /* Code (a function): kiln_session_call_void and stubs treat it as one. */
    KILN_SYMBOL_CALLABLE = 1,
    /* A weak definition: a strong one elsewhere wins. */
    KILN_SYMBOL_WEAK = 2
};

/* How an edge's fixup is computed and written: kiln::arch::x86_64::EdgeKind. S is the target's
   address, A the addend, P the address of the fixup, L the target or a stub reaching it, G its
   GOT entry, GOT the unit's GOT, Z the target's size, TP the thread pointer. */
enum kiln_edge_kind_enum {
    /* No fixup: keeps the target alive while the source is. */
    KILN_EDGE_KEEP_ALIVE = 0,
    /* S + A, 64 bits (R_X86_64_64). */
    KILN_EDGE_X86_64_POINTER64 = 1,
    /* S + A, unsigned 32 bits (R_X86_64_32). */
    KILN_EDGE_X86_64_POINTER32 = 2,
    /* S + A, signed 32 bits (R_X86_64_32S). */
    KILN_EDGE_X86_64_POINTER32_SIGNED = 3,
    /* S + A, 16 bits (R_X86_64_16). */
    KILN_EDGE_X86_64_POINTER16 = 4,
    /* S + A, 8 bits (R_X86_64_8). */
    KILN_EDGE_X86_64_POINTER8 = 5,
    /* S + A - P, 64 bits (R_X86_64_PC64). */
    KILN_EDGE_X86_64_DELTA64 = 6,
    /* S + A - P, signed 32 bits (R_X86_64_PC32). */
    KILN_EDGE_X86_64_DELTA32 = 7,
    /* S + A - P, signed 16 bits (R_X86_64_PC16). */
    KILN_EDGE_X86_64_DELTA16 = 8,
    /* S + A - P, signed 8 bits (R_X86_64_PC8). */
    KILN_EDGE_X86_64_DELTA8 = 9,
    /* P - S + A, signed 32 bits (an FDE's pointer to its CIE). */
    KILN_EDGE_X86_64_NEG_DELTA32 = 10,
    /* L + A - P, signed 32 bits (R_X86_64_PLT32): direct when S is in range, else via a stub.
       The edge for `call rel32` (addend -4). */
    KILN_EDGE_X86_64_BRANCH_PCREL32 = 11,
    /* G + A - P, signed 32 bits (R_X86_64_GOTPCREL): always through the GOT. */
    KILN_EDGE_X86_64_GOT_DELTA32 = 12,
    /* G + A - P, signed 32 bits (R_X86_64_GOTPCRELX): relaxed to S + A - P, the instruction
       rewritten, when S is in range; _REX for R_X86_64_REX_GOTPCRELX. */
    KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE = 13,
    KILN_EDGE_X86_64_GOT_DELTA32_RELAXABLE_REX = 14,
    /* A relaxed GOT load: S + A - P, and the instruction rewritten. */
    KILN_EDGE_X86_64_GOT_LOAD_RELAXED = 15,
    KILN_EDGE_X86_64_GOT_LOAD_RELAXED_REX = 16,
    /* G + A - P, 64 bits (R_X86_64_GOTPCREL64). */
    KILN_EDGE_X86_64_GOT_DELTA64 = 17,
    /* G - GOT + A, 64 bits (R_X86_64_GOT64). */
    KILN_EDGE_X86_64_GOT_OFFSET64 = 18,
    /* S + A - GOT, 64 bits (R_X86_64_GOTOFF64). */
    KILN_EDGE_X86_64_DELTA_FROM_GOT64 = 19,
    /* GOT + A - P, signed 32 bits (R_X86_64_GOTPC32). */
    KILN_EDGE_X86_64_GOT_BASE_DELTA32 = 20,
    /* GOT + A - P, 64 bits (R_X86_64_GOTPC64). */
    KILN_EDGE_X86_64_GOT_BASE_DELTA64 = 21,
    /* L - GOT + A, 64 bits (R_X86_64_PLTOFF64). */
    KILN_EDGE_X86_64_PLT_OFFSET_FROM_GOT64 = 22,
    /* Z + A, unsigned 32 bits (R_X86_64_SIZE32). */
    KILN_EDGE_X86_64_SIZE32 = 23,
    /* Z + A, 64 bits (R_X86_64_SIZE64). */
    KILN_EDGE_X86_64_SIZE64 = 24,
    /* GD(S) + A - P, signed 32 bits (R_X86_64_TLSGD). */
    KILN_EDGE_X86_64_TLS_GD_DELTA32 = 25,
    /* LD + A - P, signed 32 bits (R_X86_64_TLSLD). */
    KILN_EDGE_X86_64_TLS_LD_DELTA32 = 26,
    /* S - TLS + A, 32 bits (R_X86_64_DTPOFF32). */
    KILN_EDGE_X86_64_DTP_OFF32 = 27,
    /* S - TLS + A, 64 bits (R_X86_64_DTPOFF64). */
    KILN_EDGE_X86_64_DTP_OFF64 = 28,
    /* The unit's TLS module value, 64 bits. */
    KILN_EDGE_X86_64_TLS_MODULE64 = 29,
    /* S - TP + A, signed 32 bits (R_X86_64_TPOFF32). */
    KILN_EDGE_X86_64_TP_OFF32 = 30,
    /* S - TP + A, 64 bits (R_X86_64_TPOFF64). */
    KILN_EDGE_X86_64_TP_OFF64 = 31,
    /* G + A - P, signed 32 bits, G holding S - TP (R_X86_64_GOTTPOFF). */
    KILN_EDGE_X86_64_GOT_TP_OFF_DELTA32 = 32,
    /* R_X86_64_GOTPC32_TLSDESC relaxed to local-exec. */
    KILN_EDGE_X86_64_TLS_DESC_TO_LOCAL_EXEC = 33,
    /* R_X86_64_TLSDESC_CALL relaxed to local-exec (a two-byte nop). */
    KILN_EDGE_X86_64_TLS_DESC_CALL_TO_NOP = 34
};

/* A new, empty graph; `name` names it in messages and debuggers. */
kiln_error_t *kiln_graph_new(const char *name, kiln_graph_t **out);

/* Delete a graph (units linked from it are not affected). NULL, or a handle already deleted,
   is ignored. */
void kiln_graph_delete(kiln_graph_t *g);

/* A new section with protection `prot`. */
kiln_error_t *kiln_graph_add_section(kiln_graph_t *g, const char *name, kiln_prot_t prot,
                                     kiln_section_t *out_section);

/* A block of `len` bytes (copied) in `section`, aligned to `align` (a power of two). */
kiln_error_t *kiln_graph_add_block(kiln_graph_t *g, kiln_section_t section, const uint8_t *bytes,
                                   size_t len, uint64_t align, kiln_block_t *out_block);

/* A block of `size` zero bytes (like .bss) in `section`. */
kiln_error_t *kiln_graph_add_zero_block(kiln_graph_t *g, kiln_section_t section, uint64_t size,
                                        uint64_t align, kiln_block_t *out_block);

/* A symbol `name` at `offset` in `block`, `size` bytes long, with a visibility and
   KILN_SYMBOL_* flags. */
kiln_error_t *kiln_graph_add_symbol(kiln_graph_t *g, kiln_block_t block, const char *name,
                                    uint64_t offset, uint64_t size, kiln_visibility_t visibility,
                                    uint32_t flags);

/* An edge at `offset` in `block` to the symbol `target` (of this graph, another input of the
   link, a live unit, a definition, a library or the host), fixed up as `kind` says. */
kiln_error_t *kiln_graph_add_edge(kiln_graph_t *g, kiln_block_t block, uint32_t offset,
                                  kiln_edge_kind_t kind, const char *target, int64_t addend);

/* The code of `block` is one function that starts with `push %rbp; mov %rsp,%rbp` and keeps
   %rbp as its frame pointer: kiln writes unwind information for it (so that C++ exceptions,
   backtraces and debuggers get through it). */
kiln_error_t *kiln_graph_set_frame_pointer(kiln_graph_t *g, kiln_block_t block);

/* A function: `len` bytes of code (copied) in a read-exec section of its own (.text.NAME),
   aligned to 16, with a callable global symbol `name`. Its block, for edges, is written to
   `*out_block`. */
kiln_error_t *kiln_graph_add_function(kiln_graph_t *g, const char *name, const uint8_t *code,
                                      size_t len, kiln_block_t *out_block);

/* A data object: `len` bytes (copied) in a section of its own with protection `prot`, with a
   global symbol `name`. */
kiln_error_t *kiln_graph_add_data(kiln_graph_t *g, const char *name, const uint8_t *bytes,
                                  size_t len, uint64_t align, kiln_prot_t prot,
                                  kiln_block_t *out_block);

/* ======================================================================================== */
/* Coming with kiln-jit                                                                     */
/* ======================================================================================== */

/*
 * The JIT layer (kiln-jit) is being built: a code zone, lazy functions compiled on first call
 * by a C callback, call sites and inline caches, redefinition, compaction with a move map, and
 * heap references. Its C API will be added here, built on kiln_session_t (a zone will be made
 * from a session), following the conventions above. Nothing of it exists in this library yet.
 */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KILN_H */
