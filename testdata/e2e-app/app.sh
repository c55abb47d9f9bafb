#!/bin/sh
echo "$GREETING from $(id -un) in $(pwd): $(cat built.txt)"
