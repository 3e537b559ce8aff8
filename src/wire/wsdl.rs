//! The WSDL of one outbound message (SPEC §4): what a listener is generated from.
//!
//! Pure Rust. The structure is Salesforce's, so tooling written for Salesforce outbound messages
//! accepts it; our `ID` type is a plain string because PostgreSQL keys are not 18-character
//! Salesforce ids. Every message [`crate::wire::soap`] writes validates against the schema here.

use crate::wire::soap::push_escaped;

/// One sent column and its XSD type (`xsd:string`, `xsd:int`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a str,
    pub xsd_type: &'a str,
}

/// The WSDL for notifications about rows of `object_type` carrying `fields` (in the order they
/// are sent) to `endpoint_url`. Names are valid XML names (checked at definition time, and by
/// the DDL guard on renames), and escaped all the same: a name is data, never markup.
pub fn generate(object_type: &str, fields: &[Field], endpoint_url: &str) -> String {
    let escaped = |text: &str| {
        let mut out = String::new();
        push_escaped(&mut out, text);
        out
    };
    let object_type = escaped(object_type);
    let mut fields_xml = String::new();
    for field in fields {
        fields_xml.push_str(&format!(
            "\n       <element name=\"{}\" type=\"{}\" nillable=\"true\" minOccurs=\"0\"/>",
            escaped(field.name),
            field.xsd_type
        ));
    }
    let location = escaped(endpoint_url);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/"
 xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
 xmlns:xsd="http://www.w3.org/2001/XMLSchema"
 xmlns:ent="urn:enterprise.soap.sforce.com"
 xmlns:ens="urn:sobject.enterprise.soap.sforce.com"
 xmlns:tns="http://soap.sforce.com/2005/09/outbound"
 targetNamespace="http://soap.sforce.com/2005/09/outbound">
 <types>
  <schema xmlns="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified"
   targetNamespace="urn:enterprise.soap.sforce.com">
   <simpleType name="ID">
    <restriction base="xsd:string"/>
   </simpleType>
  </schema>
  <schema xmlns="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified"
   targetNamespace="urn:sobject.enterprise.soap.sforce.com">
   <import namespace="urn:enterprise.soap.sforce.com"/>
   <complexType name="sObject">
    <sequence>
     <element name="fieldsToNull" type="xsd:string" nillable="true" minOccurs="0" maxOccurs="unbounded"/>
     <element name="Id" type="ent:ID" nillable="true"/>
    </sequence>
   </complexType>
   <complexType name="{object_type}">
    <complexContent>
     <extension base="ens:sObject">
      <sequence>{fields_xml}
      </sequence>
     </extension>
    </complexContent>
   </complexType>
  </schema>
  <schema xmlns="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified"
   targetNamespace="http://soap.sforce.com/2005/09/outbound">
   <import namespace="urn:enterprise.soap.sforce.com"/>
   <import namespace="urn:sobject.enterprise.soap.sforce.com"/>
   <element name="notifications">
    <complexType>
     <sequence>
      <element name="OrganizationId" type="ent:ID"/>
      <element name="ActionId" type="ent:ID"/>
      <element name="SessionId" type="xsd:string" nillable="true"/>
      <element name="EnterpriseUrl" type="xsd:string"/>
      <element name="PartnerUrl" type="xsd:string"/>
      <element name="Notification" type="tns:{object_type}Notification" maxOccurs="100"/>
     </sequence>
    </complexType>
   </element>
   <complexType name="{object_type}Notification">
    <sequence>
     <element name="Id" type="ent:ID"/>
     <element name="sObject" type="ens:{object_type}"/>
    </sequence>
   </complexType>
   <element name="notificationsResponse">
    <complexType>
     <sequence>
      <element name="Ack" type="xsd:boolean"/>
     </sequence>
    </complexType>
   </element>
  </schema>
 </types>
 <message name="notificationsRequest">
  <part name="request" element="tns:notifications"/>
 </message>
 <message name="notificationsResponse">
  <part name="response" element="tns:notificationsResponse"/>
 </message>
 <portType name="NotificationPort">
  <operation name="notifications">
   <documentation>Process a number of notifications.</documentation>
   <input message="tns:notificationsRequest"/>
   <output message="tns:notificationsResponse"/>
  </operation>
 </portType>
 <binding name="NotificationBinding" type="tns:NotificationPort">
  <soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
  <operation name="notifications">
   <soap:operation soapAction=""/>
   <input>
    <soap:body use="literal"/>
   </input>
   <output>
    <soap:body use="literal"/>
   </output>
  </operation>
 </binding>
 <service name="NotificationService">
  <documentation>Receives {object_type} notifications from PostgreSQL outbound_msg.</documentation>
  <port name="Notification" binding="tns:NotificationBinding">
   <soap:address location="{location}"/>
  </port>
 </service>
</definitions>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use quick_xml::NsReader;

    fn sample() -> String {
        generate(
            "expense",
            &[
                Field {
                    name: "amount",
                    xsd_type: "xsd:decimal",
                },
                Field {
                    name: "note",
                    xsd_type: "xsd:string",
                },
            ],
            "https://erp.example/soap?a=1&b=2",
        )
    }

    #[test]
    fn wsdl_is_well_formed_and_escapes_the_endpoint() {
        let wsdl = sample();
        let mut reader = NsReader::from_str(&wsdl);
        loop {
            match reader.read_event().expect("well-formed") {
                Event::Eof => break,
                _ => {}
            }
        }
        assert!(wsdl.contains(r#"<soap:address location="https://erp.example/soap?a=1&amp;b=2"/>"#));
    }

    #[test]
    fn names_are_escaped_wherever_they_are_written() {
        let forged = r#"q"/></x><Notification a=""#;
        let wsdl = generate(
            forged,
            &[Field {
                name: forged,
                xsd_type: "xsd:string",
            }],
            "http://h/",
        );
        assert!(!wsdl.contains(forged));
        assert!(wsdl
            .contains(r#"<complexType name="q&quot;/&gt;&lt;/x&gt;&lt;Notification a=&quot;">"#));
        let mut reader = NsReader::from_str(&wsdl);
        while reader.read_event().expect("well-formed") != Event::Eof {}
    }

    #[test]
    fn fields_extend_sobject_in_order_and_are_nillable() {
        let wsdl = sample();
        let amount = wsdl
            .find(r#"<element name="amount" type="xsd:decimal" nillable="true" minOccurs="0"/>"#);
        let note =
            wsdl.find(r#"<element name="note" type="xsd:string" nillable="true" minOccurs="0"/>"#);
        assert!(amount.unwrap() < note.unwrap());
        assert!(wsdl.contains(r#"<complexType name="expense">"#));
        assert!(wsdl.contains(r#"<complexType name="expenseNotification">"#));
        assert!(wsdl.contains(r#"type="tns:expenseNotification" maxOccurs="100""#));
    }

    #[test]
    fn wsdl_names_salesforce_parts() {
        let wsdl = sample();
        for part in [
            r#"targetNamespace="http://soap.sforce.com/2005/09/outbound">"#,
            r#"<portType name="NotificationPort">"#,
            r#"<binding name="NotificationBinding" type="tns:NotificationPort">"#,
            r#"<soap:operation soapAction=""/>"#,
            r#"<service name="NotificationService">"#,
            r#"<port name="Notification" binding="tns:NotificationBinding">"#,
            r#"<message name="notificationsRequest">"#,
            r#"<message name="notificationsResponse">"#,
        ] {
            assert!(wsdl.contains(part), "missing {part}");
        }
    }
}
