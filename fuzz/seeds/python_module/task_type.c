/* The part of CPython's `_asyncio` module sockspan reads (agent/src/runtime/python.rs): a static
 * type object whose `tp_name` (offset 24) is "_asyncio.Task" and whose `tp_init` (offset 296 on
 * 3.8-3.11) points to `Task.__init__`. Built as a shared object, once stripped and once not, by
 * make_seed.sh: the fuzz target's seeds. */
struct type_object {
    char head[24];
    const char *tp_name;
    char middle[296 - 32];
    int (*tp_init)(void *, void *, void *);
    char tail[64];
};

static int _asyncio_Task___init__(void *self, void *args, void *kwargs) {
    return self == args && args == kwargs ? 0 : -1;
}

struct type_object TaskType = {
    .tp_name = "_asyncio.Task",
    .tp_init = _asyncio_Task___init__,
};
