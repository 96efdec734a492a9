# Sourced by the benchmarks: the time the hypervisor gave other guests (steal, /proc/stat)
# while they ran. It slows every figure, unevenly, so each run prints it at the end.
cpu_counters() { awk '/^cpu / {total = 0; for (i = 2; i <= NF; i++) total += $i; print $9, total}' /proc/stat; }
read -r steal_start total_start < <(cpu_counters)
report_steal() {
  local steal total
  read -r steal total < <(cpu_counters)
  echo "CPU time stolen by the host during this run: $(( 100 * (steal - steal_start) / (total - total_start) ))% (every figure swings with it)"
}
