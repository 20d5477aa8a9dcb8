#!/bin/sh
# Builds the seeds from task_type.c: `with_symbols.so` (found by `.symtab`) and `stripped.so`
# (found through the type object's relocations). Run from this directory.
set -e
gcc -O1 -fPIC -shared -o with_symbols.so task_type.c
strip --strip-all -o stripped.so with_symbols.so
