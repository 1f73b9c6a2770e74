// Plain Java 17, no Android: the same sources core/build.sh compiles and tests in CI.
plugins {
    `java-library`
}

java {
    toolchain.languageVersion.set(JavaLanguageVersion.of(17))
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // The fixtures the Python runtime tests read too (tests/fixtures at the repository root).
    systemProperty("fixtures", rootDir.resolve("../tests/fixtures").absolutePath)
}
