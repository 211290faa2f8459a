package qtool.cli;

import java.io.PrintWriter;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import qtool.QtoolException;

/** {@code qtool}: the command line. Each subcommand is one class in this package. */
@Command(name = "qtool", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        description = "Quantize large language models (GPTQ, EXL2, GGUF, AWQ) and run them.",
        subcommands = {CommandLine.HelpCommand.class, InspectCommand.class, SynthCommand.class, PplCommand.class, GenerateCommand.class,
                LogitsCommand.class, TokenizeCommand.class, GgufCommand.class, DeviceCommand.class, ConvertCommand.class, ImportMetaCommand.class,
                ImportGptqPtCommand.class})
public final class Main {

    /**
     * Inherited by every subcommand. Errors read it from the parse result, not from this field: a
     * static field here kept its value from one {@code run} to the next in the same JVM.
     */
    @Option(names = "--verbose", scope = CommandLine.ScopeType.INHERIT, description = "Print stack traces of errors.")
    boolean verbose;

    public static void main(String[] args) {
        System.exit(run(args));
    }

    public static int run(String... args) {
        CommandLine cl = commandLine();
        return cl.execute(args);
    }

    /** Runs with these streams in place of System.out and System.err (tests read what a command prints). */
    public static int run(PrintWriter out, PrintWriter err, String... args) {
        CommandLine cl = commandLine();
        cl.setOut(out);
        cl.setErr(err);
        int code = cl.execute(args);
        out.flush();
        err.flush();
        return code;
    }

    public static CommandLine commandLine() {
        CommandLine cl = new CommandLine(new Main());
        cl.setOverwrittenOptionsAllowed(true); // a flag given twice: the last one counts, as in most tools
        cl.setExecutionExceptionHandler((ex, cmd, parsed) -> {
            PrintWriter err = cmd.getErr();
            boolean verbose = verbose(parsed);
            Throwable cause = ex;
            if (cause instanceof QtoolException || cause instanceof java.io.UncheckedIOException) {
                err.println("qtool: " + cause.getMessage());
                if (verbose) cause.printStackTrace(err);
                err.flush();
                return 2;
            }
            err.println("qtool: internal error: " + cause);
            if (verbose) cause.printStackTrace(err);
            else err.println("(run with --verbose for the stack trace)");
            err.flush();
            return 1;
        });
        cl.setParameterExceptionHandler((ex, args) -> {
            PrintWriter err = ex.getCommandLine().getErr();
            err.println("qtool: " + ex.getMessage());
            err.println("Try '" + ex.getCommandLine().getCommandSpec().qualifiedName() + " --help'.");
            err.flush();
            return 2;
        });
        return cl;
    }

    /** Whether --verbose was given to the top command or any subcommand on the way. */
    private static boolean verbose(CommandLine.ParseResult parsed) {
        for (CommandLine.ParseResult p = parsed; p != null; p = p.subcommand()) {
            if (p.hasMatchedOption("--verbose")) return true;
        }
        return false;
    }

    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            String v = Main.class.getPackage().getImplementationVersion();
            return new String[] {"qtool " + (v == null ? "0.1.0" : v) + " (Java " + Runtime.version() + ")"};
        }
    }
}
