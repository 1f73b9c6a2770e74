package dev.edgekto.core;

/**
 * The feedback database layout of the Python runtime (edge_kto_runtime/feedback.py), so a phone's
 * database and a server's hold the same rows and export the same KTO JSONL. Both sides are tested
 * against tests/fixtures/feedback_schema.sql.
 */
public final class FeedbackSchema {
    private FeedbackSchema() {}

    /** One statement per entry (Android's SQLiteDatabase.execSQL runs one at a time). */
    public static final String[] STATEMENTS = {
        "CREATE TABLE IF NOT EXISTS completions (\n"
                + "    request_id TEXT PRIMARY KEY,\n"
                + "    created REAL NOT NULL,\n"
                + "    model TEXT,\n"
                + "    prompt TEXT NOT NULL,          -- JSON: chat messages, or a string for raw completions\n"
                + "    completion TEXT NOT NULL,\n"
                + "    bundle TEXT                    -- sha256 of the serving bundle's manifest.json\n"
                + ")",
        "CREATE TABLE IF NOT EXISTS feedback (\n"
                + "    request_id TEXT PRIMARY KEY REFERENCES completions(request_id),\n"
                + "    good INTEGER NOT NULL CHECK (good IN (0, 1)),\n"
                + "    note TEXT,\n"
                + "    created REAL NOT NULL\n"
                + ")",
    };

    /** Rated rows in export order, columns: request_id, prompt, completion, good, note, model, bundle. */
    public static final String RATED_ROWS = "SELECT c.request_id, c.prompt, c.completion, f.good, f.note, c.model, c.bundle FROM feedback f "
            + "JOIN completions c USING (request_id) ORDER BY f.created";

    /** A database from before the bundle column (the runtime migrates its logs the same way). */
    public static final String ADD_BUNDLE_COLUMN = "ALTER TABLE completions ADD COLUMN bundle TEXT";

    /** The schema as one script, as the fixture holds it. */
    public static String script() {
        return String.join(";\n", STATEMENTS) + ";\n";
    }
}
