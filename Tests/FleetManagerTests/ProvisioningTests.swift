import EdgeAgent
import FleetManager
import Foundation
import LocalServices
import MQTT
import MessageSchema
import PaymentSDK
import Testing
import TestSupport

/// The `tls_version` line of the shipped broker-config/mosquitto.conf, so TLS tests run with
/// the production setting.
let productionTLSVersionLine: String = {
    let text = (try? String(contentsOfFile: LocalMosquitto.brokerConfigDirectory + "/mosquitto.conf", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").first { $0.hasPrefix("tls_version") }.map(String.init) ?? ""
}()

/// A fleet set up as `fleet-manager init` does: on a real mosquitto with dynamic security (the
/// default) or the password-file administration (`files` broker template), or on a 3-node
/// nats-server cluster (`nats-users`, broker-config/nats-cluster.sh).
struct DynsecFleet {
    /// The mosquitto (dynamic security, password file).
    let broker: LocalMosquitto?
    /// The NATS cluster (nats-users).
    let cluster: LocalNATSCluster?
    let home: FleetHome
    let backend: any ProvisioningBackend
    let publisher: MQTTClient
    var provisioner: Provisioner { Provisioner(home: home, backend: backend, publisher: publisher) }
    var administration: BrokerAdministration.Kind { home.settings.brokerAdmin?.kind ?? .dynamicSecurity }

    /// The administrations on one mosquitto.
    static let mosquitto: [BrokerAdministration.Kind] = [.dynamicSecurity, .passwordFile]
    /// Every administration; the NATS cluster only with PULSEBRIDGE_CLUSTER_TESTS=1 (by hand:
    /// its cases are not in CI yet, see docs/scale.md, "Open finding").
    static let all: [BrokerAdministration.Kind] =
        mosquitto + (LocalNATSCluster.testsEnabled ? [.natsUsers] : [])

    static func with(
        _ administration: BrokerAdministration.Kind = .dynamicSecurity, tlsPort: Int? = nil, caDirectory: String? = nil,
        _ body: (DynsecFleet) async throws -> Void
    ) async throws {
        if administration == .natsUsers {
            try await LocalNATSCluster.with { cluster in
                let options = FleetSetup.Options.natsCluster(cluster, home: NSTemporaryDirectory() + "pb-home-\(UUID().uuidString)")
                try await run(options, broker: nil, cluster: cluster, body)
            }
            return
        }
        var extra = ""
        if let tlsPort, let caDirectory {
            extra = """
                listener \(tlsPort) 127.0.0.1
                cafile \(caDirectory)/ca.crt
                certfile \(caDirectory)/server.crt
                keyfile \(caDirectory)/server.key
                \(productionTLSVersionLine)
                """
            if administration == .passwordFile { extra += "\nuse_username_as_clientid true" }
        }
        let template = administration == .passwordFile ? "files" : "dynsec"
        try await LocalMosquitto.with(extraConfiguration: extra, template: template) { broker in
            let homePath = NSTemporaryDirectory() + "pb-home-\(UUID().uuidString)"
            let deviceURL = tlsPort.map { "mqtts://localhost:\($0)" } ?? "mqtt://127.0.0.1:\(broker.port)"
            var options = FleetSetup.Options(
                home: homePath, brokerHost: broker.host, brokerPort: broker.adminPort ?? broker.port,
                adminPassword: broker.adminPassword ?? "", deviceBrokerUrl: deviceURL, deviceCAFile: caDirectory.map { "\($0)/ca.crt" })
            if administration == .passwordFile {
                options.administration = BrokerAdministration(kind: .passwordFile, directory: broker.directory, pidFile: broker.pidPath)
                options.servicePort = broker.port
            }
            try await run(options, broker: broker, cluster: nil, body)
        }
    }

    private static func run(
        _ options: FleetSetup.Options, broker: LocalMosquitto?, cluster: LocalNATSCluster?, _ body: (DynsecFleet) async throws -> Void
    ) async throws {
        let home = try await FleetSetup.initialize(options)
        let backend = try await home.provisioningBackend()
        let publisher = try await home.settings.manager.connect(clientID: "test-manager")
        let fleet = DynsecFleet(broker: broker, cluster: cluster, home: home, backend: backend, publisher: publisher)
        do {
            try await body(fleet)
        } catch {
            await publisher.close()
            await backend.close()
            throw error
        }
        await publisher.close()
        await backend.close()
    }

    func bundle(_ machine: MachineID) throws -> AgentBundle {
        try AgentBundle.load(from: home.bundlesDirectory + "/\(machine.rawValue).json")
    }

    /// A client connected as the unit, with the bundle's credentials.
    func deviceClient(_ machine: MachineID, clientID: String? = nil, password: String? = nil) throws -> MQTTClient {
        let bundle = try bundle(machine)
        let endpoint = try bundle.endpoint()
        var configuration = MQTTConfiguration(host: endpoint.host, port: endpoint.port, clientID: clientID ?? machine.rawValue)
        configuration.username = machine.rawValue
        configuration.password = password ?? bundle.password
        configuration.cleanStart = true
        return try MQTTClient(configuration)
    }
}

@Suite(.serialized, .timeLimit(.minutes(6)))
struct ProvisioningTests {
    @Test(arguments: DynsecFleet.all)
    func isolationMatrix(_ administration: BrokerAdministration.Kind) async throws {
        try await DynsecFleet.with(administration) { fleet in
            let a: MachineID = "unit-a"
            let b: MachineID = "unit-b"
            _ = try await fleet.provisioner.provision(a)
            _ = try await fleet.provisioner.provision(b)
            let topics = fleet.home.topics

            // The manager watches everything, to see what leaks.
            let watcher = try await fleet.home.settings.manager.connect(clientID: "watcher")
            let watched = Inbox(watcher)
            try await watcher.subscribe("fleet/#")

            // Reading what is not yours: dynamic security refuses the subscription; mosquitto's
            // acl_file grants every SUBACK and checks each delivery instead. Both are attacked by
            // delivery below: nothing of another's may arrive.
            func mayNotRead(_ client: MQTTClient, _ filter: String, _ what: String) async {
                switch administration {
                case .dynamicSecurity, .natsUsers:
                    await #expect(throws: MQTTError.self, "\(what) subscribing to \(filter)") { try await client.subscribe(filter) }
                case .passwordFile: _ = try? await client.subscribe(filter)
                }
            }
            // Writing what is not yours: refused with a reason code on mosquitto; a NATS node
            // acknowledges a denied publish and drops it (checked by delivery below).
            func mayNotWrite(_ client: MQTTClient, _ topic: String, _ payload: String, _ what: String) async {
                switch administration {
                case .dynamicSecurity, .passwordFile:
                    await #expect(throws: MQTTError.self, "\(what) publishing to \(topic)") {
                        try await client.publish(topic: topic, payload: Data(payload.utf8))
                    }
                case .natsUsers: _ = try? await client.publish(topic: topic, payload: Data(payload.utf8))
                }
            }
            var device = try fleet.deviceClient(a)
            var deviceInbox = Inbox(device)
            try await device.connect()
            // Device A: nothing of B's, in either direction.
            for kind in TopicKind.allCases {
                let topic = topics.topic(kind, for: b)
                await mayNotRead(device, topic, "A")
                await mayNotWrite(device, topic, "x", "A")
            }
            // Not even its own payment/completed or config/desired.
            for kind in [TopicKind.paymentCompleted, .configDesired, .firmwareDesired] {
                await mayNotWrite(device, topics.topic(kind, for: a), "forged", "A (its own \(kind))")
            }
            // No wildcards beyond its own topics.
            // Nor the broker's own topics: on NATS, QoS 1 deliveries travel on $MQTT.sub.
            for filter in ["fleet/#", "fleet/+/status", "#", "fleet/unit-a/#", "$MQTT/sub/#", "$SYS/#"] {
                await mayNotRead(device, filter, "A")
            }
            // What it may do.
            for kind in [TopicKind.paymentCompleted, .configDesired, .firmwareDesired, .status] {
                try await device.subscribe(topics.topic(kind, for: a))
            }
            for kind in [TopicKind.paymentResult, .status, .heartbeat, .configReported, .firmwareReported] {
                try await device.publish(topic: topics.topic(kind, for: a), payload: Data("{}".utf8), retain: kind.retained)
            }
            // A unit's identity is bound to its client ID: dynamic security refuses A's
            // credentials under B's client ID; the password-file broker makes A's client ID its
            // username, so B's session is never taken over. A NATS node lets any identity take
            // a client ID (a residual risk, docs/scale.md): B is knocked off, but A under B's
            // client ID still reads nothing of B's.
            let victim = try fleet.deviceClient(b)
            try await victim.connect()
            let victimStates = victim.connectionStates()
            if administration == .natsUsers {
                // The takeover itself is the residual risk: B's client would take its session
                // back at once, and the two would knock each other off. What is checked is that
                // the impostor reads nothing of B's.
                await victim.close()
            }
            if administration == .passwordFile {
                // The impostor is A under its own username, so it takes A's session. A's client
                // would take it back after its reconnect delay, and on a loaded machine that
                // came mid-check ("not connected"). A is closed first; it reconnects below.
                await device.close()
            }
            let impostor = try fleet.deviceClient(a, clientID: "unit-b")
            switch administration {
            case .dynamicSecurity:
                await #expect(throws: MQTTError.self) { try await impostor.connect() }
            case .passwordFile, .natsUsers:
                try await impostor.connect()
                // It is A (its own rights only): nothing of B's reaches it.
                let impostorInbox = Inbox(impostor)
                await mayNotRead(impostor, topics.topic(.configDesired, for: b), "A as unit-b")
                // QoS 0: on NATS a QoS 1 subscription's consumer may not yet deliver right after
                // its SUBACK, and what is checked here is who gets what, not when.
                try await impostor.subscribe(topics.topic(.configDesired, for: a), qos: .atMostOnce)
                try await watcher.publish(topic: topics.topic(.configDesired, for: b), payload: Data("for-b".utf8))
                try await watcher.publish(topic: topics.topic(.configDesired, for: a), payload: Data("for-a".utf8))
                _ = try await impostorInbox.next("A's own") { $0.payload == Data("for-a".utf8) }
                let read = await impostorInbox.pending.filter { !$0.topic.hasPrefix("fleet/unit-a/") }
                #expect(read.isEmpty, "A as unit-b read \(read.map(\.topic))")
                if administration == .passwordFile {
                    try await victim.publish(topic: topics.topic(.heartbeat, for: b), payload: Data("{}".utf8))
                }
            }
            await impostor.close()
            if administration != .natsUsers {
                #expect(victim.connectionState.isConnected)
                for await state in victimStates {
                    #expect(state.isConnected, "B was knocked off")
                    break
                }
            }
            await victim.close()
            if administration != .dynamicSecurity {
                // The impostor took A's own session (same credentials); reconnect A.
                await device.close()
                device = try fleet.deviceClient(a)
                deviceInbox = Inbox(device)
                try await device.connect()
                for filter in ["fleet/#", "#"] + TopicKind.allCases.map({ topics.topic($0, for: b) }) { await mayNotRead(device, filter, "A") }
                try await device.subscribe(topics.topic(.configDesired, for: a))
            }

            // The payment server: completions for any unit, results and status; nothing else.
            let payment = try fleet.home.settings.paymentServer.client(clientID: fleet.home.settings.paymentServer.username)
            let paymentInbox = Inbox(payment)
            try await payment.connect()
            try await payment.publish(topic: topics.topic(.paymentCompleted, for: b), payload: Data("{}".utf8))
            try await payment.subscribe(topics.filter(.paymentResult))
            try await payment.subscribe(topics.filter(.status))
            await mayNotWrite(payment, topics.topic(.configDesired, for: b), "x", "the payment server")
            await mayNotRead(payment, topics.filter(.heartbeat), "the payment server")
            await mayNotRead(payment, topics.filter(.paymentCompleted), "the payment server")
            await mayNotRead(payment, "fleet/#", "the payment server")

            // Deliveries: B's topics all carry a secret (retained where the protocol retains),
            // heartbeats and completions carry one too; then a marker each may read. Nothing
            // of B's reaches A, and the payment server gets results and status only.
            let secret = Data("secret".utf8)
            let unitB = try fleet.deviceClient(b)
            try await unitB.connect()
            for kind in [TopicKind.paymentResult, .status, .heartbeat, .configReported, .firmwareReported] {
                try await unitB.publish(topic: topics.topic(kind, for: b), payload: secret, retain: kind.retained)
            }
            await unitB.close()
            for kind in [TopicKind.configDesired, .firmwareDesired] {
                try await watcher.publish(topic: topics.topic(kind, for: b), payload: secret, retain: true)
            }
            try await payment.publish(topic: topics.topic(.paymentCompleted, for: b), payload: secret)
            try await watcher.publish(topic: topics.topic(.configDesired, for: a), payload: Data("marker-a".utf8))
            try await device.publish(topic: topics.topic(.status, for: a), payload: Data("marker-p".utf8))
            _ = try await deviceInbox.next("A's marker") { $0.payload == Data("marker-a".utf8) }
            let toA = await deviceInbox.pending.filter { !$0.topic.hasPrefix("fleet/unit-a/") }
            #expect(toA.isEmpty, "A read \(toA.map(\.topic))")
            _ = try await paymentInbox.next("the payment server's marker") { $0.payload == Data("marker-p".utf8) }
            let toPayment = await paymentInbox.pending.filter { message in
                ![TopicKind.paymentResult, .status].contains { topics.topic($0, for: b) == message.topic || topics.topic($0, for: a) == message.topic }
            }
            #expect(toPayment.isEmpty, "the payment server read \(toPayment.map(\.topic))")

            // Nothing refused reached the broker's subscribers: the last legitimate publish (a
            // marker) arrives, and no forged payload came before it.
            try await device.publish(topic: topics.topic(.heartbeat, for: a), payload: Data("marker".utf8))
            _ = try await watched.next("marker") { $0.payload == Data("marker".utf8) }
            let leaked = await watched.pending.filter { $0.payload == Data("x".utf8) || $0.payload == Data("forged".utf8) }
            #expect(leaked.isEmpty, "\(leaked.map(\.topic))")

            await payment.close()
            await device.close()
            await watcher.close()
        }
    }

    /// Finding 5 of the integrity review: a payment server's credentials connecting with a
    /// unit's client ID took over the unit's session. Now refused; the unit stays connected.
    @Test(arguments: DynsecFleet.mosquitto)
    func serviceCredentialsCannotTakeAUnitsClientID(_ administration: BrokerAdministration.Kind) async throws {
        try await DynsecFleet.with(administration) { fleet in
            let unit: MachineID = "unit-t"
            _ = try await fleet.provisioner.provision(unit)
            let device = try fleet.deviceClient(unit)
            try await device.connect()
            let states = device.connectionStates()

            let payment = fleet.home.settings.paymentServer
            // Dynamic security refuses the unit's client ID; the password-file broker replaces
            // it with the payment server's username. Either way the unit keeps its session.
            func attempt(_ identity: BrokerIdentity) async throws {
                switch administration {
                case .dynamicSecurity:
                    let error = await #expect(throws: PaymentSDKError.self) {
                        let impostor = try await identity.connect(clientID: unit.rawValue)
                        await impostor.close()
                    }
                    #expect(error?.description.contains("Not authorized") == true)
                case .passwordFile, .natsUsers:
                    let impostor = try await identity.connect(clientID: unit.rawValue)
                    await impostor.close()
                }
            }
            try await attempt(payment)
            // A second payment server has its own identity, pinned to its own client ID.
            let backend = fleet.provisioner.backend
            var second = payment
            second.username = "payment-server-kiosk"
            second.password = "kiosk-password"
            try await backend.createPaymentServer(second)
            try await attempt(second)
            let own = try await second.connect(clientID: second.username)
            await own.close()
            // The unit was never knocked off: its first state is its only connected state.
            #expect(device.connectionState.isConnected)
            var seen: [MQTTConnectionState] = []
            for await state in states {
                seen.append(state)
                break
            }
            #expect(seen.allSatisfy { $0.isConnected })
            await device.close()
        }
    }

    /// Finding 6: `provision payment-server` reset the payment server's password and wrote it
    /// into a bundle. Reserved names are refused everywhere, and provisioning never takes over
    /// an identity that is not that unit's.
    @Test(arguments: DynsecFleet.mosquitto)
    func reservedNamesAndForeignIdentitiesAreNeverProvisioned(_ administration: BrokerAdministration.Kind) async throws {
        try await DynsecFleet.with(administration) { fleet in
            for name in ["payment-server", "fleet-manager", "admin", "payment-server-kiosk", "fleet-manager-serve"] {
                let error = await #expect(throws: FleetError.self) { _ = try await fleet.provisioner.provision(MachineID(unchecked: name)) }
                #expect(error?.description.contains("reserved") == true, "\(name)")
            }
            // The payment server still connects with its own password.
            let payment = try await fleet.home.settings.paymentServer.connect(clientID: fleet.home.settings.paymentServer.username)
            await payment.close()
            // A broker identity that is not a unit's is never taken over, even under a free name.
            var foreign = fleet.home.settings.paymentServer
            foreign.username = "kiosk-7"
            foreign.password = "kiosk-7-password"
            try await fleet.provisioner.backend.createPaymentServer(foreign)
            let error = await #expect(throws: FleetError.self) { _ = try await fleet.provisioner.provision("kiosk-7") }
            #expect(error?.description.contains("not a unit's") == true)
            let still = try await foreign.connect(clientID: "kiosk-7")
            await still.close()
            // In a CSV too.
            let csv = NSTemporaryDirectory() + "reserved-\(UUID().uuidString).csv"
            try "machineId\npayment-server\nunit-ok\n".write(toFile: csv, atomically: true, encoding: .utf8)
            let report = try await fleet.provisioner.provisionAll(csv: csv)
            #expect(report.failed.map(\.line) == [2])
            #expect(report.failed.first?.reason.contains("reserved") == true)
        }
    }

    @Test(arguments: DynsecFleet.all)
    func revokedUnitCannotConnectAndRotatedCredentialsReplaceTheOld(_ administration: BrokerAdministration.Kind) async throws {
        try await DynsecFleet.with(administration) { fleet in
            let machine: MachineID = "unit-r"
            _ = try await fleet.provisioner.provision(machine)
            let oldPassword = try fleet.bundle(machine).password
            let first = try fleet.deviceClient(machine)
            try await first.connect()
            await first.close()

            // Provisioning again is refused without the flag.
            await #expect(throws: FleetError.self) { _ = try await fleet.provisioner.provision(machine) }
            let rotated = try await fleet.provisioner.provision(machine, rotateCredentials: true)
            #expect(rotated.rotated)
            let newPassword = try fleet.bundle(machine).password
            #expect(newPassword != oldPassword)
            let stale = try fleet.deviceClient(machine, password: oldPassword)
            await #expect(throws: MQTTError.self) { try await stale.connect() }
            await stale.close()
            let fresh = try fleet.deviceClient(machine)
            try await fresh.connect()
            await fresh.close()

            // Its retained config is there until revocation clears it.
            try await fleet.provisioner.revoke(machine)
            let revoked = try fleet.deviceClient(machine)
            let error = await #expect(throws: MQTTError.self) { try await revoked.connect() }
            #expect(error?.description.contains("refused") == true)
            await revoked.close()
            #expect(try fleet.home.registry.machine(machine)?.state == .revoked)
            let reader = try await fleet.home.settings.manager.connect(clientID: "reader")
            let inbox = Inbox(reader)
            try await reader.subscribe("fleet/unit-r/#")
            try await reader.subscribe("fleet/+/config/desired")
            // Retained messages would arrive right after the SUBACK; a marker proves none came.
            try await reader.publish(topic: "fleet/unit-z/config/desired", payload: Data("m".utf8))
            _ = try await inbox.next("marker") { $0.topic == "fleet/unit-z/config/desired" }
            #expect(await inbox.topicsSeen == ["fleet/unit-z/config/desired"])
            await reader.close()
            await #expect(throws: FleetError.self) { _ = try await fleet.provisioner.provision(machine) }
        }
    }

    @Test func agentWithAFreshBundleComesOnlineOverTLS() async throws {
        let ca = NSTemporaryDirectory() + "pb-ca-\(UUID().uuidString)"
        let made = await (try ChildProcess.spawn("bash", [LocalMosquitto.brokerConfigDirectory + "/make-dev-ca.sh", ca])).waitForExit()
        #expect(made == .exited(0))
        let tlsPort = try LoopbackPort.free()
        try await DynsecFleet.with(tlsPort: tlsPort, caDirectory: ca) { fleet in
            let machine: MachineID = "laundry-tls"
            let outcome = try await fleet.provisioner.provision(machine)
            let attributes = try FileManager.default.attributesOfItem(atPath: outcome.bundlePath)
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            let bundle = try fleet.bundle(machine)
            #expect(bundle.brokerUrl == "mqtts://localhost:\(tlsPort)")
            // Finding 9: the shipped TLS settings must not rule out TLS 1.3.
            let handshake = NSTemporaryDirectory() + "pb-tls13-\(UUID().uuidString).txt"
            let probe = try ChildProcess.spawn(
                "/bin/sh", ["-c", "echo | openssl s_client -connect 127.0.0.1:\(tlsPort) -tls1_3 -CAfile \(ca)/ca.crt"], outputPath: handshake)
            _ = await probe.waitForExit()
            #expect(readTextFile(handshake).contains("New, TLSv1.3"))
            #expect(bundle.caCertificate?.contains("BEGIN CERTIFICATE") == true)

            let watcher = try await fleet.home.settings.paymentServer.connect(clientID: fleet.home.settings.paymentServer.username)
            let inbox = Inbox(watcher)
            try await watcher.subscribe(fleet.home.topics.filter(.status))
            let dir = NSTemporaryDirectory() + "pb-unit-\(UUID().uuidString)"
            let agent = try ChildProcess.spawn(
                AgentUnit.binary, ["run", "--bundle", outcome.bundlePath, "--state-dir", dir + "/state", "--gpio", "sim:\(dir)-edges"],
                outputPath: dir + ".log")
            let online = try await inbox.next("online over TLS", timeout: .seconds(20)) {
                (try? WireCoding.decode(StatusMessage.self, from: $0.payload))?.state == .online
            }
            #expect(online.topic == fleet.home.topics.topic(.status, for: machine))
            await agent.terminate()
            await watcher.close()
        }
    }

    @Test(arguments: DynsecFleet.mosquitto)
    func bulkProvisioningFromCSV(_ administration: BrokerAdministration.Kind) async throws {
        try await DynsecFleet.with(administration) { fleet in
            let dir = NSTemporaryDirectory() + "pb-csv-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let wash = MachineProfile(maxAmount: 5000, heartbeatS: 30, postVendDelayMs: 1000, outputs: [
                OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50),
                OutputConfig(channel: "bill", chip: "gpiochip0", line: 27, valuePerPulse: 1000, pulseMs: 100, gapMs: 150),
            ], inhibit: nil)
            try JSONEncoder().encode(wash).write(to: URL(fileURLWithPath: dir + "/wash.json"))
            var lines = ["machineId,profile"]
            for i in 0..<500 { lines.append("unit-\(i)\(i % 10 == 0 ? ",wash.json" : "")") }
            lines.insert("Not A Valid ID", at: 100)
            lines.insert("unit-42", at: 300)
            lines.insert("unit-x,missing.json", at: 400)
            try lines.joined(separator: "\n").write(toFile: dir + "/machines.csv", atomically: true, encoding: .utf8)

            let report = try await fleet.provisioner.provisionAll(csv: dir + "/machines.csv")
            #expect(report.provisioned.count == 500)
            #expect(report.failed.count == 3)
            #expect(report.failed.map(\.line) == [101, 301, 401])
            #expect(report.failed[1].reason.contains("duplicate of line 44"))
            #expect(try fleet.home.registry.machines().count == 500)
            #expect(try fleet.home.registry.machine("unit-10")?.desiredConfig?.outputs.count == 2)
            #expect(try fleet.home.registry.machine("unit-11")?.desiredConfig?.outputs.count == 1)

            // Running it again provisions nothing new and fails the same rows only.
            let again = try await fleet.provisioner.provisionAll(csv: dir + "/machines.csv")
            #expect(again.provisioned.isEmpty)
            #expect(again.alreadyProvisioned.count == 500)
            #expect(again.failed.count == 3)

            // One of them really connects.
            let device = try fleet.deviceClient("unit-499")
            try await device.connect()
            await device.close()
        }
    }

    @Test func keyRotationReachesAUnitAndRetiresTheOldKey() async throws {
        try await DynsecFleet.with { fleet in
            let machine: MachineID = "unit-k"
            _ = try await fleet.provisioner.provision(machine)
            let oldPayment = try fleet.home.signingKey(.payment)
            let rotation = try await KeyManager(home: fleet.home).rotate(.payment, client: fleet.publisher)
            #expect(rotation.retiring == [oldPayment.kid])
            #expect(rotation.pushed == [machine])
            let desired = try #require(try fleet.home.registry.machine(machine)?.desiredConfig)
            #expect(desired.version == 2)
            let trusted = Set((desired.trust ?? []).map(\.kid))
            #expect(trusted.isSuperset(of: [oldPayment.kid, rotation.new]))
            // Retiring before the unit applied it is refused.
            await #expect(throws: FleetError.self) { _ = try await KeyManager(home: fleet.home).retire(oldPayment.kid, force: false, client: fleet.publisher) }
            // The unit reports version 2 applied (as an agent would); then the key retires.
            let device = try fleet.deviceClient(machine)
            try await device.connect()
            let report = ConfigReported(machineId: machine, version: 2, status: .applied, reason: nil, at: 1)
            try await device.publish(topic: fleet.home.topics.topic(.configReported, for: machine), payload: WireCoding.encode(report), retain: true)
            await device.close()
            try await RetainedReports.refresh(home: fleet.home, machines: [machine])
            _ = try await KeyManager(home: fleet.home).retire(oldPayment.kid, force: false, client: fleet.publisher)
            let after = try #require(try fleet.home.registry.machine(machine)?.desiredConfig)
            #expect(after.version == 3)
            #expect(after.trust?.contains { $0.kid == oldPayment.kid } == false)
        }
    }
}
