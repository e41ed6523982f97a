#!/bin/bash
# A shell script around a Python program with a multiprocessing pool (supervisor tests).
"${PYTHON:-python}" "$(dirname "$0")/sup_pool.py" "$1"
