// The edge-kto Android demo: open this folder in Android Studio (Ladybug 2024.2 or newer).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "EdgeKtoDemo"
include(":core")   // plain Java: bundle verification, ChatML, feedback rows, latency stats (host-tested in CI)
include(":llama")  // Android library: llama.cpp built by CMake + the JNI bridge
include(":app")    // the chat app
