/// Pointers into fields of persistent structs, so a transaction snapshots only the
/// bytes it changes. C arrays import as tuples; `element` indexes them.
@inline(__always)
package func field<S, F>(_ p: UnsafeMutablePointer<S>, _ path: WritableKeyPath<S, F>) -> UnsafeMutablePointer<F> {
    (UnsafeMutableRawPointer(p) + MemoryLayout<S>.offset(of: path)!).assumingMemoryBound(to: F.self)
}

@inline(__always)
package func element<S, T, E>(_ p: UnsafeMutablePointer<S>, _ path: WritableKeyPath<S, T>, _ index: Int, as: E.Type = E.self) -> UnsafeMutablePointer<E> {
    (UnsafeMutableRawPointer(p) + MemoryLayout<S>.offset(of: path)! + index * MemoryLayout<E>.stride).assumingMemoryBound(to: E.self)
}
