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
 * - Objects are opaque handles: kiln_session_t, kiln_graph_t, kiln_error_t, kiln_generated_t,
 *   kiln_jit_t, kiln_move_map_t.
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
 * - kiln_jit_t: every function may be called from any thread, concurrently (see "The JIT
 *   layer" below for its callbacks).
 * - kiln_move_map_t: immutable; may be read from any thread.
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
    KILN_ERROR_PANIC = 18,
    /* A site, inline cache, heap reference or address that belongs to no live unit of the JIT's
       zone (removed, retired by a redefinition or a PIC's growth, reclaimed), or one used the
       wrong way (retargeting an immediate, setting a call's value). */
    KILN_ERROR_STALE = 19
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

/* An edge of a function given to kiln_session_link_function: the field at `offset` in its code
   gets `kind`'s fixup of the symbol `target` plus `addend` (as kiln_graph_add_edge). */
typedef struct kiln_edge_t {
    uint32_t offset;
    kiln_edge_kind_t kind;
    const char *target;
    int64_t addend;
} kiln_edge_t;

/* Link one function into a unit of its own in `scope`: `len` bytes of code at `code` (16-byte
   aligned, a callable global symbol `name`) and its `n_edges` edges `edges[0..n_edges)` (NULL
   when 0). Nothing is copied into a graph first and nothing is kept after the call: the
   fastest way to hand a JIT's compiled function to kiln, one at a time (kiln_graph_* builds
   a copy of every name and byte). Errors as kiln_session_link_graph_in; a NULL target, an edge
   kind that is not a kiln_edge_kind_t or an edge outside the code is
   KILN_ERROR_INVALID_ARGUMENT or KILN_ERROR_MALFORMED, and nothing is linked. */
kiln_error_t *kiln_session_link_function(kiln_session_t *s, kiln_scope_t scope, const char *name,
                                         const uint8_t *code, size_t len,
                                         const kiln_edge_t *edges, size_t n_edges,
                                         kiln_unit_t *out_unit);

/* Link copies of the `count` graphs `graphs[0..count)` together into one unit of `scope`: the
   batch call for a JIT that compiles functions in batches and frees them together. The graphs
   may reference each other in any order, cycles included; the per-unit work of a link is done
   once for the batch. The unit is removed as a whole. `count` 0 is KILN_ERROR_INVALID_ARGUMENT;
   on any error nothing is linked. */
kiln_error_t *kiln_session_link_graphs_as_unit(kiln_session_t *s, kiln_scope_t scope,
                                               kiln_graph_t *const *graphs, size_t count,
                                               kiln_unit_t *out_unit);

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
/* The JIT layer: zone, sites, caches, redefinition, heap refs, compaction, lazy functions  */
/* ======================================================================================== */

/*
 * A kiln_jit_t is kiln-jit's JIT over a session (kiln's docs/jit.md): a code zone reserved
 * where the VM wants it, in two regions — a FIXED region for what never moves (trampolines,
 * runtime routines, lazy stubs) and a METHOD region for compiled methods (their units keep
 * relink records, so that redefinition and compaction can rewrite every edge into them; the
 * method region is compacted when the VM says so, kiln_jit_compact).
 * Zone units are units of the session: numbered by it, looked up with kiln_session_lookup.
 *
 * Graphs linked into the zone may declare patchable places (kiln_graph_add_site: call sites,
 * slots, guard immediates) and references to the VM's heap (kiln_graph_add_heap_ref). Sites,
 * inline caches and heap references are plain values (kiln_site_t, kiln_ic_t,
 * kiln_heap_ref_t), not handles: each use checks that its unit is still live in the zone, and
 * one of a removed, retired or reclaimed unit gives KILN_ERROR_STALE, never a write.
 *
 * Code that threads may be running is only ever changed through the zone's writable alias
 * (never a writable and executable mapping), each naturally aligned field with one atomic
 * store, and then every thread's instruction stream is serialized (membarrier SYNC_CORE):
 * when a call that patches returns, no thread runs the old bytes.
 *
 *     kiln_zone_config_t config = {0};
 *     config.size = 1 << 20;                        // fixed region: size/8; anywhere
 *     kiln_jit_t *jit;
 *     err = kiln_jit_new(session, &config, &jit);
 *     ... kiln_graph_add_function(g, "answer", code, n, &b);
 *     ... kiln_graph_add_site(g, "answer", 8, KILN_SITE_ABS64);   // movabs imm64 at +8
 *     err = kiln_jit_link(jit, KILN_REGION_METHOD, g, &unit);
 *     err = kiln_jit_unit_sites(jit, unit, &site, 1, &count);
 *     err = kiln_jit_set_value(jit, &site, 43);                  // answer() now returns 43
 *     kiln_jit_delete(jit);                                      // its units, then the zone
 *
 * THREADS: every kiln_jit_* function may be called from any thread, concurrently (kiln-jit's
 * Jit is shared by compiler threads and the VM); patches of sites are ordered by one lock. A
 * JIT keeps its session alive: deleting the session handle first is allowed (the session ends
 * with the JIT). Deleting a JIT removes its units and unmaps the zone: no thread may run its
 * code any more (lazy stubs included). kiln_jit_compact needs the method region's code idle
 * (see there). Callbacks (compile, error handler, verdict, forward) run on the thread that
 * made them necessary and must return normally.
 */

/* A JIT: a code zone in a session's executor and what kiln-jit knows of its units. */
typedef struct kiln_jit_t kiln_jit_t;

/* Which region of the zone a unit goes into. */
typedef uint32_t kiln_region_t;
enum kiln_region_enum {
    /* Never moved, never freed by compaction: trampolines, runtime routines, stubs. */
    KILN_REGION_FIXED = 0,
    /* Compiled methods: they keep relink records (redefinition, code moving). */
    KILN_REGION_METHOD = 1
};

/* What kind of place a site is. Its field must be aligned to its width (one atomic store). */
typedef uint32_t kiln_site_kind_t;
enum kiln_site_kind_enum {
    /* The rel32 of a `call` (e8) or `jmp` (e9): 4 bytes, the instruction ends right after. */
    KILN_SITE_REL32 = 0,
    /* An absolute 64-bit slot: a pointer in data, or the imm64 of `movabs`. */
    KILN_SITE_ABS64 = 1,
    /* A 32-bit immediate: an inline cache guard's key (`cmp $imm32`). */
    KILN_SITE_IMM32 = 2
};

/* Where kiln_jit_new reserves the zone. */
enum kiln_zone_placement_enum {
    /* Wherever the executor finds room (in process on Linux: near the libraries). */
    KILN_ZONE_ANYWHERE = 0,
    /* At exactly `address` (page aligned; an error if anything is mapped there). */
    KILN_ZONE_EXACTLY = 1,
    /* As near `address` as the address space allows (within 2 GiB). */
    KILN_ZONE_NEAR = 2,
    /* Every byte within a 32-bit displacement of each of the `reach_count` addresses at
       `reach` (the VM's runtime functions, a library the code calls directly). */
    KILN_ZONE_WITHIN_REACH = 3
};

/* The zone kiln_jit_new reserves. Zero-initialize it and set what you need. */
typedef struct kiln_zone_config_t {
    /* Bytes of the whole zone (rounded up to pages); required. */
    uint64_t size;
    /* Bytes of the fixed region at its start (rounded up to pages); 0: size/8, at least
       64 KiB. It must be smaller than the zone. */
    uint64_t fixed_size;
    /* A KILN_ZONE_* placement. */
    uint32_t placement;
    /* For KILN_ZONE_EXACTLY and KILN_ZONE_NEAR. */
    uint64_t address;
    /* For KILN_ZONE_WITHIN_REACH: `reach_count` addresses. */
    const uint64_t *reach;
    size_t reach_count;
} kiln_zone_config_t;

/* Where the zone landed. Each region also has read-only and data parts after the code parts;
   the code parts are given here. */
typedef struct kiln_zone_info_t {
    uint64_t base;
    uint64_t size;
    uint64_t fixed_code;
    uint64_t fixed_code_size;
    uint64_t method_code;
    uint64_t method_code_size;
} kiln_zone_info_t;

/* A patchable place of a zone unit, as kiln_jit_unit_sites lists them. */
typedef struct kiln_site_t {
    kiln_unit_t unit;
    /* The field's address. */
    uint64_t addr;
    kiln_site_kind_t kind;
} kiln_site_t;

/* A reference from a zone unit's code or data to an object of the VM's heap. */
typedef struct kiln_heap_ref_t {
    kiln_unit_t unit;
    /* The field's address. */
    uint64_t addr;
    /* 8 (absolute 64-bit) or 4 (a 32-bit reference: low heap, or compressed). */
    uint32_t width;
    /* The value it holds (as read by kiln_jit_heap_refs; to write, for
       kiln_jit_write_heap_refs). */
    uint64_t value;
} kiln_heap_ref_t;

/* One write of a write window: `len` bytes at `bytes` (copied) to `addr`. */
typedef struct kiln_write_t {
    uint64_t addr;
    const uint8_t *bytes;
    size_t len;
} kiln_write_t;

/* A monomorphic inline cache: a guard compares the receiver's key with the immediate or slot
   at site `key`; on a hit the code calls or jumps through site `target`; `empty` is the key
   value that matches no receiver (the cache is empty while the guard holds it). */
typedef struct kiln_ic_t {
    kiln_site_t key;
    kiln_site_t target;
    uint64_t empty;
} kiln_ic_t;

enum kiln_ic_state_enum {
    KILN_IC_EMPTY = 0,
    KILN_IC_SET = 1,
    /* Emptied; it gets `key` and `target` at the first kiln_jit_reclaim given an epoch after
       `since` (no thread can then be between the old guard and the old call). */
    KILN_IC_PENDING = 2
};

typedef struct kiln_ic_state_t {
    /* A KILN_IC_* state. */
    uint32_t state;
    uint64_t key;
    uint64_t target;
    uint64_t since;
} kiln_ic_state_t;

/* The register a PIC compares (the receiver's class word), as kiln-jit's KeyRegister. */
enum kiln_pic_key_register_enum {
    KILN_PIC_KEY_RAX = 0,
    KILN_PIC_KEY_RCX = 1,
    KILN_PIC_KEY_RDX = 2,
    KILN_PIC_KEY_RBX = 3,
    KILN_PIC_KEY_RSI = 6,
    KILN_PIC_KEY_RDI = 7,
    KILN_PIC_KEY_R8 = 8,
    KILN_PIC_KEY_R9 = 9,
    KILN_PIC_KEY_R10 = 10
};

/* How many bits of the key register a PIC compares. */
enum kiln_pic_key_width_enum {
    KILN_PIC_KEY_32 = 32,
    KILN_PIC_KEY_64 = 64
};

/* A polymorphic inline cache for one site (a Rel32 or Abs64 site that calls or jumps). */
typedef struct kiln_pic_config_t {
    /* A KILN_PIC_KEY_* register and width. */
    uint32_t key_register;
    uint32_t key_width;
    /* At most this many cases (1 to 64; 0: 6); growing past it goes megamorphic. */
    uint32_t max_cases;
    /* Where a key no case holds goes (required). */
    uint64_t miss;
    /* Where the site goes when the PIC is full (0: none; growing a full PIC is an error). */
    uint64_t megamorphic;
} kiln_pic_config_t;

typedef struct kiln_pic_case_t {
    uint64_t key;
    uint64_t target;
} kiln_pic_case_t;

/* A PIC case whose target is a symbol name (kiln_jit_pic_build_named). */
typedef struct kiln_pic_named_case_t {
    uint64_t key;
    const char *target;
} kiln_pic_named_case_t;

typedef struct kiln_pic_state_t {
    /* The site goes to the megamorphic handler (the other fields are 0). */
    bool megamorphic;
    size_t cases;
    /* The PIC stub's unit (method region) and entry. */
    kiln_unit_t stub;
    uint64_t entry;
} kiln_pic_state_t;

/* What kiln_jit_redefine did. */
typedef struct kiln_redefined_t {
    kiln_unit_t new_unit;
    /* Now retired: its names are gone, its sites refused; its code stays until reclaimed. */
    kiln_unit_t old_unit;
    /* The epoch it was retired in. */
    uint64_t since;
    /* Sites kiln had pointed at the old definitions, now at the new ones. */
    size_t retargeted;
    /* Sites pointing into the old unit that no new definition takes over: retarget them
       before reclaiming it. */
    size_t unmapped;
    /* Units still bound to the old unit (fixed-region units keep no relink records): the old
       unit stays until they are removed. */
    size_t unreached;
} kiln_redefined_t;

/* A range of a unit's memory (a segment). */
typedef struct kiln_range_t {
    kiln_unit_t unit;
    uint64_t start;
    uint64_t size;
} kiln_range_t;

/* What kiln_jit_reclaim did. */
typedef struct kiln_reclaimed_t {
    /* Retired units freed (code filled with int3, memory reusable). */
    size_t freed;
    /* Retired units that could not be freed yet (others bind to them): tried again later. */
    size_t kept;
    /* Inline caches whose pending set completed, and those whose completion failed (they stay
       empty: calls take the miss path). */
    size_t ics_completed;
    size_t ic_errors;
} kiln_reclaimed_t;

enum kiln_lazy_state_enum {
    /* Not called yet (or its first call is compiling it now). */
    KILN_LAZY_NOT_COMPILED = 0,
    KILN_LAZY_COMPILED = 1,
    /* Its compilation failed; the error handler chose where its calls go. */
    KILN_LAZY_FAILED = 2
};

typedef struct kiln_lazy_status_t {
    /* A KILN_LAZY_* state. */
    uint32_t state;
    /* When compiled: its code's unit and address, and how many call sites were patched to
       call the code directly (bypassing the stub). */
    kiln_unit_t unit;
    uint64_t code;
    size_t redirected;
} kiln_lazy_status_t;

/* ---- the zone ---- */

/* A JIT over session `s` with a zone reserved as `config` says; its units go into the
   session's default scope. Errors: config NULL or size 0, an unknown placement (_INVALID_
   ARGUMENT); a fixed region not smaller than the zone (_USAGE); no room where asked
   (_EXECUTOR). */
kiln_error_t *kiln_jit_new(kiln_session_t *s, const kiln_zone_config_t *config, kiln_jit_t **out);

/* Delete a JIT: its units are removed (newest first) and the zone unmapped. NULL, or a handle
   already deleted, is ignored. */
void kiln_jit_delete(kiln_jit_t *jit);

/* Where the zone is and how it is split. */
kiln_error_t *kiln_jit_zone(kiln_jit_t *jit, kiln_zone_info_t *out_info);

/* ---- annotating graphs for the zone (a session link ignores these) ---- */

/* A patchable place `offset` bytes after symbol `symbol` of the graph (a global symbol the
   graph defines), of kind `kind`. Checked when linked: inside the symbol, aligned. */
kiln_error_t *kiln_graph_add_site(kiln_graph_t *g, const char *symbol, uint64_t offset,
                                  kiln_site_kind_t kind);

/* A heap reference `offset` bytes after `symbol`, `width` 8 or 4 bytes wide. */
kiln_error_t *kiln_graph_add_heap_ref(kiln_graph_t *g, const char *symbol, uint64_t offset,
                                      uint32_t width);

/* ---- units ---- */

/* Link a copy of graph `g` into `region` of the zone (the graph stays the caller's). Its
   symbols join the session's default scope. Errors as kiln_session_link_graph, and
   KILN_ERROR_MALFORMED when a site or heap reference does not fit the graph. */
kiln_error_t *kiln_jit_link(kiln_jit_t *jit, kiln_region_t region, const kiln_graph_t *g,
                            kiln_unit_t *out_unit);

/* Link a relocatable ELF object (`len` bytes, copied; `name` names it in messages and
   debuggers) into `region` of the zone: a runtime routine written in C, a method a compiler
   emitted as an object. Everything kiln does for an object (unwind info, gdb, perf) works in
   the zone, and in the method region it moves with compaction. Objects declare no sites or
   heap references. Its initializers run with kiln_session_run_initializers. */
kiln_error_t *kiln_jit_link_object(kiln_jit_t *jit, kiln_region_t region, const char *name,
                                   const uint8_t *bytes, size_t len, kiln_unit_t *out_unit);

/* The region a zone unit is in (KILN_ERROR_UNKNOWN_UNIT for a unit not live in this zone). */
kiln_error_t *kiln_jit_unit_region(kiln_jit_t *jit, kiln_unit_t unit, kiln_region_t *out_region);

/* A zone unit's sites, in the order the graph declared them: written to `out_sites` as many
   as `cap` allows, their number to `*out_count`. A retired unit has none. */
kiln_error_t *kiln_jit_unit_sites(kiln_jit_t *jit, kiln_unit_t unit, kiln_site_t *out_sites,
                                  size_t cap, size_t *out_count);

/* Remove a zone unit (refused while others bind to it, or when it is a lazy function's stub
   or compiled code, which live as long as the JIT). */
kiln_error_t *kiln_jit_remove(kiln_jit_t *jit, kiln_unit_t unit);

/* ---- the write window: the VM's own patches ---- */

/* Apply `n` writes as one window: each is checked first (it must lie inside one part of the
   zone's fixed or method region, inside one segment of a live unit or clear of every unit;
   else KILN_ERROR_STALE and nothing is written), then they are written in order through the
   writable alias, each naturally aligned 8-, 4- or 2-byte piece with one atomic store, and
   every thread's instruction stream is serialized. A change wider than one piece is the VM's
   to order (write the body first, the word that makes it reachable last). */
kiln_error_t *kiln_jit_write(kiln_jit_t *jit, const kiln_write_t *writes, size_t n);

/* Read `len` bytes of the zone at `addr` into `buf` (read-only path; same checks). */
kiln_error_t *kiln_jit_read(kiln_jit_t *jit, uint64_t addr, uint8_t *buf, size_t len);

/* ---- sites ---- */

/* Make a Rel32 site call or jump to `target` (within 2 GiB), or an Abs64 site hold it: one
   atomic store, then every core serializes. The target is remembered: a redefinition of it
   retargets the site. An Imm32 site is an error (kiln_jit_set_value). */
kiln_error_t *kiln_jit_retarget(kiln_jit_t *jit, const kiln_site_t *site, uint64_t target);

/* Set an Imm32 (a value that fits 32 bits) or Abs64 site's value, atomically. A Rel32 site is
   an error (kiln_jit_retarget). */
kiln_error_t *kiln_jit_set_value(kiln_jit_t *jit, const kiln_site_t *site, uint64_t value);

/* ---- inline caches ---- */

/* Make a monomorphic inline cache of a guard's `key` site (Imm32 or Abs64) and its `target`
   site (Rel32 or Abs64), `empty` being the key that matches nothing. Its current state is
   read from the code. */
kiln_error_t *kiln_jit_ic_new(kiln_jit_t *jit, const kiln_site_t *key, const kiln_site_t *target,
                              uint64_t empty, kiln_ic_t *out_ic);

/* Cache `key` → `target`. An empty cache, or one whose target stays the same, is set at once
   (KILN_IC_SET). Otherwise a thread could be between the old guard and the old call, so the
   cache is emptied and completes at a later kiln_jit_reclaim (KILN_IC_PENDING, with the
   epoch). `*out_state` (may be NULL) says which. `key` must not be the empty key. */
kiln_error_t *kiln_jit_ic_set(kiln_jit_t *jit, const kiln_ic_t *ic, uint64_t key,
                              uint64_t target, kiln_ic_state_t *out_state);

/* Empty the cache (every call takes the miss path). */
kiln_error_t *kiln_jit_ic_clear(kiln_jit_t *jit, const kiln_ic_t *ic);

kiln_error_t *kiln_jit_ic_state(kiln_jit_t *jit, const kiln_ic_t *ic, kiln_ic_state_t *out_state);

/* ---- polymorphic inline caches (a PIC is named by the site it serves) ---- */

/* Build a PIC stub comparing the key register with each of the `n` cases' keys (each once,
   fitting the width), jumping to its target on a match and to `config->miss` otherwise, and
   point `site` at it. A PIC already at the site is replaced (the old stub is retired). */
kiln_error_t *kiln_jit_pic_build(kiln_jit_t *jit, const kiln_site_t *site,
                                 const kiln_pic_config_t *config, const kiln_pic_case_t *cases,
                                 size_t n);

/* Add a case: a new stub with one more case replaces the old one (retired, freed by a later
   reclaim); past `max_cases` the site goes to the megamorphic handler. `*out_state` may be
   NULL. */
kiln_error_t *kiln_jit_pic_grow(kiln_jit_t *jit, const kiln_site_t *site, uint64_t key,
                                uint64_t target, kiln_pic_state_t *out_state);

kiln_error_t *kiln_jit_pic_state(kiln_jit_t *jit, const kiln_site_t *site,
                                 kiln_pic_state_t *out_state);

/* As kiln_jit_pic_build, with every target a symbol name resolved in the JIT's scope: the
   cases' targets and `miss` (required; config->miss is ignored) as a link resolves names (live
   units, kiln_session_define, libraries, the process, generators), else KILN_ERROR_UNRESOLVED
   listing them; `megamorphic` (NULL: none; config->megamorphic is ignored) must be defined by
   a live unit of the JIT's scope (kiln-jit looks it up when the PIC overflows), else
   KILN_ERROR_UNDEFINED naming it. Either way nothing changes. The PIC keeps the names: a
   target redefined later (kiln_jit_redefine) is followed by the stub. */
kiln_error_t *kiln_jit_pic_build_named(kiln_jit_t *jit, const kiln_site_t *site,
                                       const kiln_pic_config_t *config, const char *miss,
                                       const char *megamorphic,
                                       const kiln_pic_named_case_t *cases, size_t n);

/* As kiln_jit_pic_grow, with the target a symbol name (as for kiln_jit_pic_build_named). A
   PIC built with addresses may grow by name, and one built with names by address. */
kiln_error_t *kiln_jit_pic_grow_named(kiln_jit_t *jit, const kiln_site_t *site, uint64_t key,
                                      const char *target, kiln_pic_state_t *out_state);

/* ---- redefinition, epochs, reclaiming ---- */

/* Replace zone unit `old`'s definitions by those of graph `g` (a copy), linked into the same
   region: every edge of method-region units, every site, inline cache and PIC kiln patched
   that reached an old definition reaches the new one when this returns. The old unit is
   retired, not freed: threads may still run it until the VM reclaims it. `*out_redefined`
   may be NULL. A lazy function's compiled code is redefined through the unit defining
   NAME.code (kiln_jit_redefine_name(jit, "NAME.code", ...)): its stub and the calls patched to
   reach the old code follow. */
kiln_error_t *kiln_jit_redefine(kiln_jit_t *jit, kiln_unit_t old, const kiln_graph_t *g,
                                kiln_redefined_t *out_redefined);

/* The same, the old unit being the one that defines `name`. */
kiln_error_t *kiln_jit_redefine_name(kiln_jit_t *jit, const char *name, const kiln_graph_t *g,
                                     kiln_redefined_t *out_redefined);

/* Begin a new epoch and return it. Protocol: e = grace_start; make sure every thread has
   since been where it runs nothing retired (a safepoint, back in the interpreter, a stack scan
   finding no return address in kiln_jit_retired's ranges); then reclaim(e). */
kiln_error_t *kiln_jit_grace_start(kiln_jit_t *jit, uint64_t *out_epoch);

/* Free what was retired before `safe_epoch` (from kiln_jit_grace_start; a later one is
   KILN_ERROR_STALE) and complete pending inline caches. `*out_reclaimed` may be NULL. */
kiln_error_t *kiln_jit_reclaim(kiln_jit_t *jit, uint64_t safe_epoch,
                               kiln_reclaimed_t *out_reclaimed);

/* The memory of retired units not yet freed, one range per segment (where no frame, return
   address or saved pc may point when the VM reclaims). List convention as kiln_jit_unit_sites. */
kiln_error_t *kiln_jit_retired(kiln_jit_t *jit, kiln_range_t *out_ranges, size_t cap,
                               size_t *out_count);

/* ---- heap references ---- */

/* Every heap reference of the zone's live units, by address, with the value it holds now.
   Code is only read (through a read-only path: no write or execute permission involved) and
   nothing runs: a GC's marking may call this while compiled code runs. List convention as
   kiln_jit_unit_sites. */
kiln_error_t *kiln_jit_heap_refs(kiln_jit_t *jit, kiln_heap_ref_t *out_refs, size_t cap,
                                 size_t *out_count);

/* A moving GC's forwarding function: the new value of `heap_ref` (whose `value` is the one it
   holds now). Runs on the calling thread, once per reference, while the zone's code is held in
   place: it must not call kiln_jit_compact (which would wait for it forever). */
typedef uint64_t (*kiln_heap_forward_fn)(void *user, const kiln_heap_ref_t *heap_ref);

/* After a moving GC: ask `forward` (with `user`) for every reference's new value, then write
   those that change in one write window (each field with one atomic store). `*out_changed`
   (may be NULL) gets how many changed. A value that does not fit a 32-bit reference fails it
   all (nothing written). */
kiln_error_t *kiln_jit_update_heap_refs(kiln_jit_t *jit, kiln_heap_forward_fn forward, void *user,
                                        size_t *out_changed);

/* Write the `n` references' `value`s (addressed by unit and addr, e.g. a list the GC built)
   in one write window: all or nothing (KILN_ERROR_STALE for one that is not live). */
kiln_error_t *kiln_jit_write_heap_refs(kiln_jit_t *jit, const kiln_heap_ref_t *refs, size_t n);

/* ---- compaction of the method region ---- */

/* What the VM says of a method-region unit at a compaction. */
typedef uint32_t kiln_verdict_t;
enum kiln_verdict_enum {
    /* Keep it; it may move. */
    KILN_VERDICT_KEEP = 0,
    /* Remove it. The units that use it (bind to its symbols, or have a site kiln pointed into
       it) must be dropped too. */
    KILN_VERDICT_DROP = 1,
    /* Keep it where it is (frames are active in it, or the VM holds raw pointers into it). */
    KILN_VERDICT_PIN = 2
};

/* The verdict on method-region unit `unit`. Asked once per unit, oldest first, on the calling
   thread, before anything changes and with no kiln lock held (it may look at the JIT: sites,
   lookups). */
typedef kiln_verdict_t (*kiln_verdict_fn)(void *user, kiln_unit_t unit);

/* Where a compaction moved code and data, and what it freed: for rewriting return addresses
   and saved pcs on the VM's stacks, and pointers the VM keeps into compiled code. Immutable:
   may be read from any thread. */
typedef struct kiln_move_map_t kiln_move_map_t;

/* How long each step of a compaction took, in nanoseconds. */
typedef struct kiln_compaction_times_t {
    /* Asking the verdicts and checking them (users of dropped units). */
    uint64_t verdicts_ns;
    /* Removing the dropped units. */
    uint64_t drop_ns;
    /* Deciding where everything goes. */
    uint64_t layout_ns;
    /* Moving bytes, applying edges again, telling the debug sinks. */
    uint64_t moves_ns;
    /* Rebuilding the free lists, filling freed code, writing sites and heap references. */
    uint64_t finish_ns;
} kiln_compaction_times_t;

/* What kiln_jit_compact did. Which units were dropped, moved and pinned (and why) is listed
   by the move map: kiln_move_map_dropped_units, _moved_units, _pinned. */
typedef struct kiln_compaction_t {
    /* Units removed, units moved, units that stayed because of a pin (the VM's, or a unit
       without relink records using it, or a link in progress binding to it). */
    size_t dropped;
    size_t moved;
    size_t pinned;
    /* Bytes of the method region in use before and after (code, read-only data and data). */
    uint64_t used_before;
    uint64_t used_after;
    /* The largest free range of the method region's code part after. */
    uint64_t largest_free_code;
    /* How long the compaction took (the sum of `times`), and each step. */
    uint64_t nanoseconds;
    kiln_compaction_times_t times;
} kiln_compaction_t;

/* Why a unit stayed where it was at a compaction. */
typedef uint32_t kiln_pin_reason_t;
enum kiln_pin_reason_enum {
    /* The verdict said KILN_VERDICT_PIN. */
    KILN_PIN_VERDICT = 0,
    /* Unit `user` (a fixed-region unit, or one linked outside the zone: no relink records)
       uses it, so its references into it could not be rewritten. */
    KILN_PIN_USED_WITHOUT_RELINK = 1,
    /* Its edges tie it to its address (thread-local storage), or it is not in the zone. */
    KILN_PIN_CANNOT_MOVE = 2,
    /* A link in progress on another thread binds to it. */
    KILN_PIN_LINKING = 3,
    /* Retired (replaced by a redefinition or a PIC's growth): threads may still run it until
       kiln_jit_reclaim frees it. */
    KILN_PIN_RETIRED = 4
};

/* A unit a compaction left where it was, and why. */
typedef struct kiln_pinned_t {
    kiln_unit_t unit;
    kiln_pin_reason_t reason;
    /* For KILN_PIN_USED_WITHOUT_RELINK, the unit that uses it; else 0. */
    kiln_unit_t user;
} kiln_pinned_t;

/* One moved segment: [from, from + size) is now [to, to + size). */
typedef struct kiln_range_move_t {
    kiln_unit_t unit;
    uint64_t from;
    uint64_t to;
    uint64_t size;
} kiln_range_move_t;

/* Compact the method region: `verdict` (with `user`) is asked about every method-region unit
   first; then the dropped units are removed and the survivors slide down to close the gaps,
   every edge into moved code (calls from other units, stubs, GOT entries, inline caches,
   PICs) and every PC-relative edge out of it applied again, the sites, guard keys and heap
   references kiln wrote written again at their new places, the debug sinks told, and the freed
   code filled with int3 (a stale return address into it traps).
   Refused before anything changes: a verdict that is not a KILN_VERDICT_* (_INVALID_ARGUMENT);
   a dropped unit that a unit which stays uses (_HAS_DEPENDENTS, naming both: drop those too, or
   point their sites elsewhere first).
   No thread may run code of the method region meanwhile, except in pinned units (the VM stops
   them, or they are in the fixed region); other threads may link (what they link stays put).
   Sites and heap references taken before are stale afterwards: translate their `addr` with the
   move map, or list them again. `*out_report` and `*out_map` may be NULL; the map is the
   caller's to delete. */
kiln_error_t *kiln_jit_compact(kiln_jit_t *jit, kiln_verdict_fn verdict, void *user,
                               kiln_compaction_t *out_report, kiln_move_map_t **out_map);

/* The new address of `pc`: moved if it lay in a segment that moved, the same if it lay anywhere
   else that lives (a unit that stayed, the fixed region, the host). If it lay in a dropped unit
   (nothing may return there), `*out_pc` is 0 and `*out_dropped` (may be NULL) true. Ranges are
   half-open: translate a return address just past a unit's end as translate(pc - 1) + 1. */
kiln_error_t *kiln_move_map_translate(const kiln_move_map_t *map, uint64_t pc, uint64_t *out_pc,
                                      bool *out_dropped);

/* The moved segments, by old address. List convention as kiln_jit_unit_sites. */
kiln_error_t *kiln_move_map_moves(const kiln_move_map_t *map, kiln_range_move_t *out_moves,
                                  size_t cap, size_t *out_count);

/* The dropped units' segments, by address (their `unit` is 0: those numbers are gone). */
kiln_error_t *kiln_move_map_dropped(const kiln_move_map_t *map, kiln_range_t *out_ranges,
                                    size_t cap, size_t *out_count);

/* The compaction's per-unit results, each a list by the convention of kiln_jit_unit_sites.
   The units the compaction dropped, by the numbers they had (gone now: no function takes them
   any more). */
kiln_error_t *kiln_move_map_dropped_units(const kiln_move_map_t *map, kiln_unit_t *out_units,
                                          size_t cap, size_t *out_count);

/* The units that moved (each of their segments is in kiln_move_map_moves). Units that had
   nowhere lower to go are neither moved nor pinned. */
kiln_error_t *kiln_move_map_moved_units(const kiln_move_map_t *map, kiln_unit_t *out_units,
                                        size_t cap, size_t *out_count);

/* The units that stayed where they were because something held them, with the reason. */
kiln_error_t *kiln_move_map_pinned(const kiln_move_map_t *map, kiln_pinned_t *out_pinned,
                                   size_t cap, size_t *out_count);

/* Delete a move map. NULL, or a handle already deleted, is ignored. */
void kiln_move_map_delete(kiln_move_map_t *map);

/* ---- lazy functions ---- */

/* Compiles lazy function `name`: build a graph that defines the function's code under
   `code_name` (`name` with ".code" appended; the stub keeps `name`) with kiln_graph_add_function
   (it may declare sites and heap references, and call other functions by name), and hand it
   over in `*out_graph`: kiln takes it (links a copy into the method region and deletes the
   handle). Or return an error (kiln_error_new): kiln takes and deletes it, and its message
   reaches the JIT's lazy error handler.
   Runs at most once per function, on the thread of its first call (concurrent first callers
   wait), inside kiln's resolver trampoline, with no kiln lock held: it may use the JIT and the
   session (look up, link other graphs, call other lazy functions). It must return normally. */
typedef kiln_error_t *(*kiln_lazy_compile_fn)(void *user, kiln_jit_t *jit, const char *name,
                                              const char *code_name, kiln_graph_t **out_graph);

/* Declare `name` as a lazy function compiled by `callback` (with `user`) on its first call.
   Its callable address — a stub in the fixed region, valid as long as the JIT — goes to
   `*out_addr` at once; `name` becomes a global symbol of the default scope (an error if it is
   defined already), so other units may call it by name. After the first call the stub jumps
   straight to the code, and the call that entered it (and calls from method-region units) are
   patched to call the code directly. `user` must stay valid as long as the JIT, and be usable
   from any thread that may call the function. */
kiln_error_t *kiln_jit_declare_lazy(kiln_jit_t *jit, const char *name,
                                    kiln_lazy_compile_fn callback, void *user,
                                    uint64_t *out_addr);

/* Where lazy function `name` (declared on this JIT; else KILN_ERROR_NOT_FOUND) stands. If
   `out_failure` is not NULL it gets, for a failed function, a new error (kind
   KILN_ERROR_CALLBACK, the caller deletes it) with why it failed, else NULL. */
kiln_error_t *kiln_jit_lazy_status(kiln_jit_t *jit, const char *name,
                                   kiln_lazy_status_t *out_status, kiln_error_t **out_failure);

/* A lazy function could not be compiled (its callback's error, a graph that does not define
   its code, a failed link): `message` says why; `name` is NULL for a function of another JIT
   (see below). Return the address where that call — and every later call of the function —
   continues, taking the same arguments (e.g. a bridge into the interpreter), or 0 to abort the
   process (a call cannot return an error). Runs on the calling thread, once per function. */
typedef uint64_t (*kiln_lazy_error_fn)(void *user, const char *name, uint64_t key,
                                       const char *message);

/* Set (or with NULL remove) the handler for lazy functions that cannot be compiled. Without
   one, such a call aborts the process. In process, the executor has one handler for the whole
   process: the last one set (by any JIT) wins. `user` as for kiln_jit_declare_lazy. */
kiln_error_t *kiln_jit_set_lazy_error_handler(kiln_jit_t *jit, kiln_lazy_error_fn callback,
                                              void *user);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KILN_H */
