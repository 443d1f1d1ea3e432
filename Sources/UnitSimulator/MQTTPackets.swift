import NIOCore

/// The MQTT 3.1.1 packets a unit needs, encoded and decoded over NIO buffers. The simulator
/// runs thousands of sessions in one process, which libmosquitto's per-client thread and
/// `select()` loop cannot (descriptors above 1,023); the edge agent itself keeps libmosquitto.
enum MQTTPacket: Sendable {
    case connack(sessionPresent: Bool, returnCode: UInt8)
    case publish(topic: String, payload: ByteBuffer, qos: UInt8, retain: Bool, packetID: UInt16?)
    case puback(packetID: UInt16)
    case suback(packetID: UInt16, codes: [UInt8])
    case pingresp
    case other(type: UInt8)

    /// Decodes one packet from the front of `buffer`, or nil if it is not all there yet.
    /// Throws on a malformed packet (the connection is then closed).
    static func decode(_ buffer: inout ByteBuffer) throws -> MQTTPacket? {
        let start = buffer.readerIndex
        guard let first: UInt8 = buffer.getInteger(at: start) else { return nil }
        var length = 0
        var multiplier = 1
        var index = start + 1
        while true {
            guard let byte: UInt8 = buffer.getInteger(at: index) else { return nil }
            length += Int(byte & 0x7F) * multiplier
            index += 1
            if byte & 0x80 == 0 { break }
            multiplier *= 128
            guard multiplier <= 128 * 128 * 128 else { throw PacketError.malformed("remaining length") }
        }
        guard buffer.writerIndex - index >= length else { return nil }
        buffer.moveReaderIndex(to: index)
        var body = buffer.readSlice(length: length)!
        let type = first >> 4
        switch type {
        case 2:
            guard let flags: UInt8 = body.readInteger(), let code: UInt8 = body.readInteger() else { throw PacketError.malformed("CONNACK") }
            return .connack(sessionPresent: flags & 1 == 1, returnCode: code)
        case 3:
            let qos = (first >> 1) & 3
            guard let topicLength: UInt16 = body.readInteger(), let topic = body.readString(length: Int(topicLength)) else {
                throw PacketError.malformed("PUBLISH topic")
            }
            var packetID: UInt16?
            if qos > 0 {
                guard let id: UInt16 = body.readInteger() else { throw PacketError.malformed("PUBLISH id") }
                packetID = id
            }
            return .publish(topic: topic, payload: body, qos: qos, retain: first & 1 == 1, packetID: packetID)
        case 4:
            guard let id: UInt16 = body.readInteger() else { throw PacketError.malformed("PUBACK") }
            return .puback(packetID: id)
        case 9:
            guard let id: UInt16 = body.readInteger() else { throw PacketError.malformed("SUBACK") }
            return .suback(packetID: id, codes: body.readBytes(length: body.readableBytes) ?? [])
        case 13:
            return .pingresp
        default:
            return .other(type: type)
        }
    }

    enum PacketError: Error, CustomStringConvertible {
        case malformed(String)
        var description: String {
            switch self {
            case .malformed(let what): "malformed MQTT packet (\(what))"
            }
        }
    }
}

/// Writes outgoing packets.
enum MQTTEncoder {
    struct Will {
        var topic: String
        var payload: [UInt8]
        var qos: UInt8
        var retain: Bool
    }

    static func connect(
        into buffer: inout ByteBuffer, clientID: String, username: String?, password: String?, will: Will?, cleanSession: Bool,
        keepAlive: UInt16
    ) {
        var body = ByteBufferAllocator().buffer(capacity: 128)
        writeString("MQTT", into: &body)
        body.writeInteger(UInt8(4))
        var flags: UInt8 = cleanSession ? 0x02 : 0
        if let will { flags |= 0x04 | (will.qos << 3) | (will.retain ? 0x20 : 0) }
        if password != nil { flags |= 0x40 }
        if username != nil { flags |= 0x80 }
        body.writeInteger(flags)
        body.writeInteger(keepAlive)
        writeString(clientID, into: &body)
        if let will {
            writeString(will.topic, into: &body)
            body.writeInteger(UInt16(will.payload.count))
            body.writeBytes(will.payload)
        }
        if let username { writeString(username, into: &body) }
        if let password { writeString(password, into: &body) }
        frame(0x10, body, into: &buffer)
    }

    static func subscribe(into buffer: inout ByteBuffer, packetID: UInt16, _ filters: [(String, UInt8)]) {
        var body = ByteBufferAllocator().buffer(capacity: 128)
        body.writeInteger(packetID)
        for (filter, qos) in filters {
            writeString(filter, into: &body)
            body.writeInteger(qos)
        }
        frame(0x82, body, into: &buffer)
    }

    static func publish(into buffer: inout ByteBuffer, topic: String, payload: [UInt8], qos: UInt8, retain: Bool, packetID: UInt16?) {
        var body = ByteBufferAllocator().buffer(capacity: topic.utf8.count + payload.count + 4)
        writeString(topic, into: &body)
        if let packetID { body.writeInteger(packetID) }
        body.writeBytes(payload)
        frame(0x30 | (qos << 1) | (retain ? 1 : 0), body, into: &buffer)
    }

    static func puback(into buffer: inout ByteBuffer, packetID: UInt16) {
        buffer.writeBytes([0x40, 0x02])
        buffer.writeInteger(packetID)
    }

    static func pingreq(into buffer: inout ByteBuffer) { buffer.writeBytes([0xC0, 0x00]) }
    static func disconnect(into buffer: inout ByteBuffer) { buffer.writeBytes([0xE0, 0x00]) }

    private static func writeString(_ string: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt16(string.utf8.count))
        buffer.writeString(string)
    }

    private static func frame(_ header: UInt8, _ body: ByteBuffer, into buffer: inout ByteBuffer) {
        buffer.writeInteger(header)
        var length = body.readableBytes
        repeat {
            var byte = UInt8(length % 128)
            length /= 128
            if length > 0 { byte |= 0x80 }
            buffer.writeInteger(byte)
        } while length > 0
        var body = body
        buffer.writeBuffer(&body)
    }
}
