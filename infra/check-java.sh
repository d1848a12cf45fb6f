#!/bin/sh
# Fails with an actionable message unless Java 17 or newer is on PATH (Spark 4 needs it).
if ! command -v java >/dev/null 2>&1; then
  echo "nightrec: Java 17+ is required by Spark 4 and 'java' is not on PATH." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  exit 1
fi
version=$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n 1)
if [ -z "$version" ] || [ "$version" -lt 17 ]; then
  echo "nightrec: Java 17+ is required by Spark 4, found: $(java -version 2>&1 | head -n 1)" >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless (and make it the default java)" >&2
  exit 1
fi
