// A Java service whose worker thread measures its own phases: `worker` calls
// `preprocess` and `predict` in turn and reads the thread's CPU clock around each, so
// the time each method holds is known exactly.
//
// Usage: java -XX:+PreserveFramePointer Phases.java WARMUP_SECONDS SECONDS TRUTH.json
//
// Run it with `-XX:CompileCommand=dontinline,Phases::*` to keep the phases methods of
// their own: compiled code inlined into a caller is the caller's in a perf map.
//
// The first WARMUP_SECONDS let the JIT compile the methods, and are not counted: the
// phases and the process's CPU time are measured over the SECONDS after them.
import java.io.FileWriter;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;

public class Phases {
    static final double[] TABLE = new double[4096];
    static final ThreadMXBean THREADS = ManagementFactory.getThreadMXBean();
    static final com.sun.management.OperatingSystemMXBean PROCESS =
        (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();

    static double preprocess(int n) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            s += Math.sqrt(TABLE[(i * 7) & 4095] + i);
        }
        return s;
    }

    static double predict(int n) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            s += TABLE[i & 4095] * (i % 13);
        }
        return s;
    }

    static double sink;
    static long preprocessNs, predictNs;

    // One round of both phases: called once a round, so that the JIT compiles it as it
    // does a request handler, rather than leaving one long loop to the interpreter.
    static void worker() {
        long t0 = THREADS.getCurrentThreadCpuTime();
        sink += preprocess(20000);
        long t1 = THREADS.getCurrentThreadCpuTime();
        sink += predict(40000);
        long t2 = THREADS.getCurrentThreadCpuTime();
        preprocessNs += t1 - t0;
        predictNs += t2 - t1;
    }

    public static void main(String[] args) throws Exception {
        for (int i = 0; i < TABLE.length; i++) {
            TABLE[i] = (i * 31) % 977;
        }
        long start = System.nanoTime();
        long warmupEnd = start + (long) (Double.parseDouble(args[0]) * 1e9);
        long end = warmupEnd + (long) (Double.parseDouble(args[1]) * 1e9);
        while (System.nanoTime() < warmupEnd) {
            worker();
        }
        // The same code runs before and after: a branch taken only from now on would
        // make the JIT throw the compiled worker away and compile it again.
        preprocessNs = 0;
        predictNs = 0;
        long processStart = PROCESS.getProcessCpuTime();
        while (System.nanoTime() < end) {
            worker();
        }
        long processNs = PROCESS.getProcessCpuTime() - processStart;
        try (FileWriter out = new FileWriter(args[2])) {
            out.write(String.format(
                "{\"process_ns\": %d, \"preprocess\": %d, \"predict\": %d}",
                processNs, preprocessNs, predictNs));
        }
    }
}
