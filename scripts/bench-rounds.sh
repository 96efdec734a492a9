# Sourced by the benchmarks: statistics over rounds, one line of numbers per round on stdin.
# round_stats COLUMN [DIVISOR_COLUMN] prints the median, minimum and maximum of that column
# (columns from 0), or of each round's ratio COLUMN / DIVISOR_COLUMN.
round_stats() {
  /usr/bin/python3 -c "
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
a, b = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None
values = [r[a] / r[b] if b is not None else r[a] for r in rows]
print(statistics.median(values), min(values), max(values))" "$@"
}
