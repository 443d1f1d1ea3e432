import Foundation
import Logging
import MQTT
import MessageSchema

extension EdgeAgent {
    /// A signed `firmware/desired`, seen on the pipeline: checked here, downloaded and
    /// verified off the pipeline (payments keep flowing), installed back on the pipeline
    /// between trains (`install`).
    func handleFirmware(_ payload: Data, client: MQTTClient) async {
        guard !payload.isEmpty else { return }
        let trust = pipeline.withLock { $0.trust }
        let update: FirmwareUpdate
        do {
            update = try SignedEnvelope.open(payload, as: FirmwareUpdate.self, trust: trust).body
        } catch {
            // Unsigned, wrongly signed or malformed: ignored, and said so.
            logger.warning("firmware update refused: \(error)")
            await reportFirmware(
                version: SignedEnvelope.peekBodyField(payload, "version", as: String.self) ?? "unknown", .failed, reason: error.reason.rawValue, client: client)
            return
        }
        guard update.machineId == machine else {
            await reportFirmware(version: update.version, .failed, reason: RejectionReason.wrongMachine.rawValue, client: client)
            return
        }
        if update.version == options.firmwareVersion {
            await reportFirmware(version: update.version, .installed, reason: nil, client: client)
            return
        }
        // Each signed update is acted on once: the retained copy that comes back on every
        // reconnection (after a failure, a stalled download, a rollback) is not tried again,
        // and an older message never replaces a newer one. The operator publishes again to retry.
        let lastIssued = ((try? store.meta("firmware.lastIssuedAt")) ?? nil).flatMap(Int.init) ?? 0
        guard update.issuedAt > lastIssued else {
            logger.info("firmware \(update.version) (issued \(update.issuedAt)) was handled before; not trying it again")
            return
        }
        do {
            try store.setMeta("firmware.lastIssuedAt", String(update.issuedAt))
        } catch {
            noteJournalFailure("cannot record a firmware update: \(error)")
            return
        }
        let attempt = "\(update.version)/\(update.sha256)"
        let failedBefore = ((try? store.meta("firmware.failed")) ?? "").split(separator: "\n")
        if failedBefore.contains(Substring(attempt)) || failedBefore.contains(Substring("\(update.version)/*")) {
            logger.info("firmware \(update.version) failed before on this unit; not trying it again")
            return
        }
        if FirmwareVersionOrder.isLower(update.version, than: options.firmwareVersion), !update.allowDowngrade {
            logger.warning("firmware \(update.version) is older than \(options.firmwareVersion); refused (allowDowngrade not set)")
            await reportFirmware(version: update.version, .failed, reason: "downgrade_refused", client: client)
            return
        }
        guard let downloads = downloadDirectory else {
            await reportFirmware(version: update.version, .failed, reason: "updates_disabled", client: client)
            return
        }
        // A newer update replaces one still downloading.
        let task = Task { await self.download(update, into: downloads, client: client) }
        let previous = firmwareDownload.withLock { s in
            defer { s = task }
            return s
        }
        previous?.cancel()
    }

    /// Where artifacts are downloaded: never the state folder, whose space is the journal's.
    var downloadDirectory: String? {
        options.downloadDirectory ?? options.installDirectory.map { $0 + "/downloads" }
    }

    func cancelFirmwareDownload() {
        firmwareDownload.withLock { $0 }?.cancel()
    }

    /// Off the pipeline: free space, download, size and SHA-256; then the pipeline installs.
    private func download(_ update: FirmwareUpdate, into downloads: String, client: MQTTClient) async {
        var log = logger
        log[metadataKey: "firmware.version"] = "\(update.version)"
        let artifact = downloads + "/edge-agent-\(update.version).download"
        do {
            try FirmwareDownload.prepare(directory: downloads, room: update.size)
            await reportFirmware(version: update.version, .downloading, reason: nil, client: client)
            let fetched = try await fetchWithRetries(update, to: artifact, log: log)
            try Task.checkCancellation()
            await reportFirmware(version: update.version, .verifying, reason: nil, client: client)
            try FirmwareDownload.verify(fetched, against: update, at: artifact)
            log.info("firmware verified; installing between trains", metadata: ["firmware.sha256": "\(fetched.sha256)"])
            submit(.installFirmware(VerifiedFirmware(update: update, artifact: artifact)))
        } catch is CancellationError {
            unlink(artifact)
            log.info("firmware download cancelled")
        } catch {
            unlink(artifact)
            let failure = error as? FirmwareFailure ?? FirmwareFailure(reason: "download_failed", detail: "\(error)")
            log.error("firmware update failed: \(failure)")
            if failure.reason != "download_failed" && failure.reason != "no_space" {
                rememberFailedFirmware("\(update.version)/\(update.sha256)")
            }
            await reportFirmware(version: update.version, .failed, reason: failure.reason, client: client)
        }
    }

    /// On the pipeline, between trains: install a verified artifact and restart into it.
    func install(_ verified: VerifiedFirmware, client: MQTTClient) async {
        let update = verified.update
        guard let installDirectory = options.installDirectory else { return }
        var log = logger
        log[metadataKey: "firmware.version"] = "\(update.version)"
        do {
            await reportFirmware(version: update.version, .installing, reason: nil, client: client)
            let layout = FirmwareLayout(installDirectory: installDirectory)
            let previous = layout.currentVersion
            if let command = options.installCommand {
                try runInstallCommand(command, artifact: verified.artifact, version: update.version)
            } else {
                try layout.install(artifact: verified.artifact, version: update.version)
            }
            try PendingFirmware(version: update.version, previousVersion: previous, stage: .installed, failedStarts: 0)
                .save(stateDirectory: options.stateDirectory)
            log.notice("firmware \(update.version) installed; restarting into it")
            restartRequest.yield("firmware \(update.version) installed")
        } catch {
            unlink(verified.artifact)
            let failure = error as? FirmwareFailure ?? FirmwareFailure(reason: "install_failed", detail: "\(error)")
            log.error("firmware update failed: \(failure)")
            rememberFailedFirmware("\(update.version)/\(update.sha256)")
            await reportFirmware(version: update.version, .failed, reason: failure.reason, client: client)
        }
    }

    /// At power-up: partial downloads a crash left behind (and the state-folder downloads of
    /// older versions) go.
    func removeStaleDownloads() {
        for directory in [downloadDirectory, options.stateDirectory].compactMap({ $0 }) {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { continue }
            for name in names where name.hasSuffix(".download") {
                unlink(directory + "/" + name)
                logger.info("removed a stale firmware download", metadata: ["firmware.file": "\(directory)/\(name)"])
            }
        }
    }

    /// Networks fail: three tries, 1 s and 2 s apart, before `download_failed`.
    private func fetchWithRetries(_ update: FirmwareUpdate, to artifact: String, log: Logger) async throws -> FirmwareDownload.Fetched {
        var attempt = 1
        while true {
            do {
                return try await FirmwareDownload.fetch(update, to: artifact)
            } catch let failure as FirmwareFailure where failure.reason == "download_failed" && attempt < 3 {
                log.warning("firmware download failed (\(failure.detail)); retrying")
                try? await Task.sleep(for: .seconds(attempt))
                attempt += 1
            }
        }
    }

    private func runInstallCommand(_ command: String, artifact: String, version: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "\(command) \"$0\" \"$1\"", artifact, version]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw FirmwareFailure(reason: "install_failed", detail: "install command exited \(process.terminationStatus)")
        }
    }

    /// At power-up, before any message is handled: a version we were rolled back from must not
    /// be installed again when its retained `firmware/desired` arrives.
    func noteRolledBackFirmware() {
        guard let pending = PendingFirmware.load(stateDirectory: options.stateDirectory),
            pending.stage == .rolledBack || pending.version != options.firmwareVersion
        else { return }
        rememberFailedFirmware(pending.version + "/*")
    }

    func rememberFailedFirmware(_ attempt: String) {
        let known = (try? store.meta("firmware.failed")) ?? ""
        try? store.setMeta("firmware.failed", known.isEmpty ? attempt : known + "\n" + attempt)
    }

    /// After a restart into new firmware: confirm it once online, or roll back if it does not
    /// get there in time. The previous version, started again after a rollback, says so.
    func watchFirmwareHealth(_ client: MQTTClient) async {
        guard var pending = PendingFirmware.load(stateDirectory: options.stateDirectory) else { return }
        if pending.stage == .installed, pending.version != options.firmwareVersion, let installDirectory = options.installDirectory,
            FirmwareLayout(installDirectory: installDirectory).currentVersion == pending.version
        {
            // `current` points at the new version, but what runs from it reports another: the
            // artifact was mislabelled. Back to the previous version, for real.
            logger.error("firmware \(pending.version) reports itself as \(options.firmwareVersion); rolling back")
            try? FirmwareLayout(installDirectory: installDirectory).rollBack()
            rememberFailedFirmware(pending.version + "/*")
            pending.stage = .rolledBack
            try? pending.save(stateDirectory: options.stateDirectory)
            restartRequest.yield("rolled back from mislabelled firmware \(pending.version)")
            return
        }
        if pending.stage == .rolledBack || pending.version != options.firmwareVersion {
            // We are the version that was rolled back to (powerUp already noted the failure).
            await waitOnline(client)
            logger.error("firmware \(pending.version) did not come up healthy and was rolled back")
            await reportFirmware(version: pending.version, .failed, reason: "not_healthy", client: client)
            PendingFirmware.clear(stateDirectory: options.stateDirectory)
            return
        }
        let healthy = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await self.waitOnline(client)
                return true
            }
            group.addTask {
                try? await Task.sleep(for: self.options.healthTimeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if healthy {
            await reportFirmware(version: pending.version, .installed, reason: nil, client: client)
            PendingFirmware.clear(stateDirectory: options.stateDirectory)
            logger.notice("firmware \(pending.version) is healthy")
        } else if let installDirectory = options.installDirectory {
            logger.error("firmware \(pending.version) not online within \(options.healthTimeout); rolling back")
            try? FirmwareLayout(installDirectory: installDirectory).rollBack()
            pending.stage = .rolledBack
            try? pending.save(stateDirectory: options.stateDirectory)
            restartRequest.yield("rolled back from firmware \(pending.version)")
        }
    }

    /// Until `online` has been published on a connection.
    private func waitOnline(_ client: MQTTClient) async {
        for await _ in onlineSignals { return }
    }

    func reportFirmware(version: String, _ state: FirmwareState, reason: String?, client: MQTTClient) async {
        let report = FirmwareReported(machineId: machine, version: version, state: state, reason: reason, at: now())
        do {
            try await client.publish(
                topic: topics.topic(.firmwareReported, for: machine), payload: WireCoding.encode(report), qos: .atLeastOnce, retain: true)
        } catch {
            logger.warning("cannot report firmware \(state.rawValue): \(error)")
        }
    }
}
